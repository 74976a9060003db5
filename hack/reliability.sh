#!/usr/bin/env bash
# The fault tests at full length, their figures collected into
# docs/reliability.md: `make reliability` (~35 min) and `make soak` (30 min more).
#
#   hack/reliability.sh           faults, lifecycle and catalogue tests; API watch cuts for
#                                 10 minutes, 5 minutes of idle after 100 deployments
#   hack/reliability.sh soak      the 30-minute soak too (GOGRID_SOAK_SECONDS=1800)
#
# Each test writes its figures (with the request rate they were measured at)
# to a report directory; hack/reliability-report.py turns them into the tables
# of docs/reliability.md. make test runs the same tests with short durations.
# Needs root, like make e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
report=${GOGRID_E2E_REPORT_DIR:-${CARGO_TARGET_DIR:-target}/reliability}
mkdir -p "$report"
report=$(cd "$report" && pwd)
export GOGRID_E2E_REPORT_DIR=$report
export GOGRID_RELIABILITY_CUT_SECONDS=${GOGRID_RELIABILITY_CUT_SECONDS:-600}
export GOGRID_RELIABILITY_IDLE_SECONDS=${GOGRID_RELIABILITY_IDLE_SECONDS:-300}
tests=(catalogue faults lifecycle)
if [ "${1:-}" = soak ]; then
  export GOGRID_SOAK_SECONDS=${GOGRID_SOAK_SECONDS:-1800}
  tests+=(soak)
fi
echo "==> fault tests (${tests[*]}), figures to $report" >&2
e2e/run-tests.sh "${tests[@]}"
echo "==> docs/reliability.md from $report" >&2
python3 hack/reliability-report.py "$report" docs/reliability.md
