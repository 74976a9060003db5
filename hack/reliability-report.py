"""Writes docs/reliability.md from the figures the fault tests report.

    python3 hack/reliability-report.py REPORT_DIR docs/reliability.md

REPORT_DIR holds one JSON file per test (e2e/src/fault.rs `report`), written
by `hack/reliability.sh` (make reliability / make soak).
"""

import datetime
import json
import os
import sys


def load(directory, name):
    path = os.path.join(directory, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def counts_row(label, figure):
    if figure is None:
        return f"| {label} | not run | | | | | | | |"
    load_ = figure.get("load", figure)
    c = load_["counts"]
    return (
        f"| {label} | {load_['rate_per_second']:g}/s | {c['sent']} | {c['ok']} | {c['client_errors']} | "
        f"{c['throttled']} | {c['server_errors'] + c['transport'] + c['timeouts'] + c['missing']} "
        f"({c['server_errors']} 5xx, {c['transport']} transport, {c['timeouts']} timeouts, {c['missing']} missing) | "
        f"{c['slow_over_2s']} of {c['slow']} | {c['rerouted']} |"
    )


def ms(v):
    return f"{v / 1000:.1f} s" if v >= 1000 else f"{v} ms"


def main():
    directory, out = sys.argv[1], sys.argv[2]
    f = {name: load(directory, name) for name in [
        "agent-sigterm", "agent-sigkill", "operator-sigkill-mid-rollout", "apiserver-down",
        "etcd-compaction-restart", "watch-cuts", "two-operators", "hundred-deployments-idle",
        "overload", "delete-and-upgrade", "references", "soak"]}
    lines = []
    w = lines.append
    w("# Reliability: faults on the local real cluster")
    w("")
    w(f"Generated {datetime.date.today().isoformat()} by `make reliability` (hack/reliability.sh); "
      "the soak by `make soak`. `make test` runs the same tests with short durations "
      "(2 minutes of watch cuts, 1 minute of idle) and asserts the same outcomes.")
    w("")
    w("Every figure comes from the e2e harness (kube-apiserver, etcd, kwok, three fake GPU nodes, "
      "the operator and three real agents as processes, all on one 2-vCPU machine) under the "
      "open-loop load generator of `e2e/src/openloop.rs`: requests leave at a fixed rate whatever "
      "the answers do, each is sent once and tagged with its own OIP `id` (checked in the answer), "
      "and every one is accounted for: ok, 4xx, 429, 5xx, transport error, timeout or missing. "
      "**Lost = 5xx + transport + timeout + missing.** One request in ten is slow (64 generated "
      "tokens on SmolLM2, 2 s and more) so that every switch and restart has requests in flight. "
      "The client is endpoint-aware (it watches the Service's EndpointSlices, as kube-proxy or an "
      "Envoy sidecar does) and never sends a request twice; when a TCP connection is refused, "
      "nothing was sent and the request goes to the next ready endpoint (`rerouted`, as Envoy's "
      "and gRPC's balancers do). 429s are the node policy saying *not now* (one batch at a time "
      "per GPU, 2 s at the gate, 10 s in the queue) and carry `Retry-After`; they are not lost.")
    w("")
    w("Writes are judged by the API server's audit log (every write by a ServiceAccount of "
      "GoGrid's namespace): no test saw the operator or an agent write any spec.")
    w("")
    w("## Requests")
    w("")
    w("| fault | rate | sent | ok | 4xx | 429 | lost | slow >= 2 s | rerouted |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    w(counts_row("agent SIGTERM", f["agent-sigterm"]))
    w(counts_row("agent SIGKILL", f["agent-sigkill"]))
    w(counts_row("operator SIGKILL mid-rollout", f["operator-sigkill-mid-rollout"]))
    w(counts_row("kube-apiserver down 10 s, then 60 s", f["apiserver-down"]))
    w(counts_row("etcd compacted and restarted, GoGrid cut off (410 Gone)", f["etcd-compaction-restart"]))
    w(counts_row("every API connection cut every 30 s", f["watch-cuts"]))
    w(counts_row("twice the sustainable rate", f["overload"]))
    if f["delete-and-upgrade"]:
        w(counts_row("helm upgrade of GoGrid mid-rollout", {"load": f["delete-and-upgrade"]["helm_upgrade_load"]}))
    if f["soak"]:
        w(counts_row(f"soak, {f['soak']['seconds'] // 60} minutes", f["soak"]))
    w("")
    w("## What each fault did")
    w("")
    t = f["agent-sigterm"]
    if t:
        w(f"- **Agent SIGTERM** (`faults` e2e): the agent reported itself unready at once, left the "
          f"EndpointSlices after {ms(t['left_endpointslices_ms'])}, kept answering for its 5 s drain "
          f"and exited after {ms(t['exited_ms'])}; {t['in_flight_answered']} of {t['in_flight_at_signal']} "
          "requests in flight at the signal were answered, none lost.")
    t = f["agent-sigkill"]
    if t:
        w(f"- **Agent SIGKILL**: {t['lost']} request(s) lost, all of them in flight on the killed agent "
          f"({t['in_flight_at_kill']} were); requests sent to it afterwards were refused at connect and "
          f"rerouted. The supervisor (the harness's kubelet) restarted it; it served again "
          f"{ms(t['restart_to_ready_ms'])} after the kill, and the split of the next 120 answers was the "
          "weight in force (30%). A restarted agent binds its servers only once its GpuNode says it "
          "serves nothing yet, so it never answers 404 while the slices still list it.")
    t = f["operator-sigkill-mid-rollout"]
    if t:
        w(f"- **Operator SIGKILL mid-rollout** (steps 20% / 50% / 80%, killed at step {t['step_at_kill']}): "
          f"the new operator resumed at step {t['resumed']} with the same start time (the state is in "
          f"status), moved to the next step {ms(t['next_step_after_kill_ms'])} after the kill, as the "
          f"pause said; v2 was loaded once per agent ({t['v2_loads_per_agent']}); nothing lost.")
    t = f["apiserver-down"]
    if t:
        for o in t["outages"]:
            w(f"- **kube-apiserver down {o['down_seconds']} s**: the agents kept serving; no process "
              f"restarted; after it came back a deployment was deleted and a weight edited, and every "
              f"agent had unloaded the one and routed the other {ms(o['converged_after_change_ms'])} later.")
    t = f["etcd-compaction-restart"]
    if t:
        w(f"- **etcd compacted (to revision {t['compacted_to_revision']}) and restarted** while GoGrid's "
          "connections were blocked at the API proxy, after a deployment was deleted and a weight "
          "edited: the watches came back to 410 Gone (`The resourceVersion for the provided watch is "
          "too old`), listed again and missed nothing: converged "
          f"{ms(t['converged_after_reconnect_ms'])} after GoGrid could reach the API server again; no "
          "process restarted.")
    t = f["watch-cuts"]
    if t:
        w(f"- **Every connection of the operator and the agents to the API server cut every 30 s for "
          f"{t['seconds'] // 60} minutes** ({t['cuts']} cuts through the harness's TCP proxy, "
          "e2e/src/bin/apiproxy.rs), a weight edit and a deployment created or deleted between cuts: "
          f"no process restarted, no delete missed, converged {ms(t['converged_after_last_change_ms'])} "
          "after the last change.")
    t = f["two-operators"]
    if t:
        w(f"- **Two operator replicas**: while both ran, the audit log shows {t['by_standby_besides_lease']} "
          f"writes by the standby besides its Lease attempts (of {t['writes_while_both_ran']} by the "
          f"operator); when the leader was killed the standby held the Lease {ms(t['takeover_ms'])} later "
          f"(Lease duration {t['lease_duration_seconds']} s) and was from then the only writer.")
    t = f["hundred-deployments-idle"]
    if t:
        agents = ", ".join(f"{a['node']} {a['per_minute']:.1f}/min" for a in t["agents"])
        w(f"- **{t['deployments']} InferenceDeployments created at once**: all Ready after "
          f"{ms(t['all_ready_ms'])}. Then {t['idle_seconds']} s of idle: "
          f"{t['operator_writes_while_idle']} writes by the operator (besides "
          f"{t['operator_lease_renewals']} Lease renewals of leader election), and the agents' GpuNode "
          f"writes were their heartbeats only ({agents}; the heartbeat is every 30 s).")
    t = f["overload"]
    if t:
        per = ", ".join(f"{a:.0f}" for a in t["admitted_batches_per_agent"])
        w(f"- **Twice the sustainable rate** ({t['load']['rate_per_second']:g}/s against a policy of one "
          f"item per batch every {t['min_request_interval_ms']} ms on each of three agents, "
          f"{t['sustainable_per_second']:g}/s): {t['ok_per_second']:.1f} answers/s, the rest 429 with "
          "Retry-After, no 5xx, no timeout; the agents admitted "
          f"{per} batches in the run, within the interval's bound.")
    t = f["delete-and-upgrade"]
    if t:
        w(f"- **Deleted mid-rollout**: nothing left (Services, EndpointSlices, ServiceMonitor, pipelines) "
          f"and the VRAM in use back to where it was, {ms(t['deleted_mid_rollout_clean_ms'])} after the "
          f"delete. **Deleted while the operator was down**: the agents unloaded it themselves and the "
          f"garbage collector took its children; clean {ms(t['deleted_with_operator_down_clean_ms'])} "
          "after the operator was back, which re-created nothing. **`helm upgrade` of GoGrid "
          "mid-rollout**: the step held, nothing lost; deleted afterwards, clean in "
          f"{ms(t['upgraded_then_deleted_clean_ms'])}.")
    t = f["references"]
    if t:
        w(f"- **References the API server cannot check** (`catalogue` e2e): a deployment naming a "
          f"missing ResourceProfile was Degraded/ProfileNotFound after {ms(t['missing_profile']['condition_ms'])} "
          f"with its Warning Event after {ms(t['missing_profile']['event_ms'])}; one naming a missing PVC "
          f"Degraded/PvcNotFound after {ms(t['missing_claim']['condition_ms'])}, Event after "
          f"{ms(t['missing_claim']['event_ms'])} (goal: 5 s).")
    t = f["soak"]
    if t:
        w(f"- **Soak, {t['seconds'] // 60} minutes** at {t['load']['rate_per_second']:g}/s with the canary "
          "weight moved every minute: nothing lost; resident memory and open files, median of the first "
          "third against the last (after a 2-minute warm-up):")
        w("")
        w("  | process | RSS first third | RSS last third | open files first | open files last |")
        w("  | --- | ---: | ---: | ---: | ---: |")
        for p in t["processes"]:
            w(f"  | {p['process']} | {p['rss_kib_first_third'] / 1024:.1f} MiB | "
              f"{p['rss_kib_last_third'] / 1024:.1f} MiB | {p['open_files_first_third']} | "
              f"{p['open_files_last_third']} |")
    else:
        w("- **Soak**: not run in this report (`make soak`).")
    w("")
    w("## Bad manifests and bad requests")
    w("")
    w("- `e2e/invalid/` holds 40 manifests and `e2e/invalid/updates/` two updates; the `catalogue` "
      "e2e sends each to the real API server (dry run, strict field validation): 38 are refused "
      "with HTTP 422 and the field in `details.causes[].field` (bounds, enums, CEL cross-field "
      "rules with a `fieldPath`, name limits), the two unknown-field cases with 400 (a strict "
      "decoding error: the API server names the field in the message and gives no causes), and "
      "both updates (the `model.name` transition rule, a weight edited to 150) with 422, the "
      "stored spec unchanged.")
    w("- The serving layer's catalogues (`node-agent/serve/tests/api/rest.rs`, `grpc.rs`): non-JSON, "
      "nesting past the decoder's depth, wrong datatype or shape, data length not matching the "
      "shape, negative and overflowing dimensions, binary-extension lengths that lie (longer than "
      "the body, more than remains, bytes left over, both `data` and `binary_data_size`), raw "
      "contents not a whole number of elements, BYTES length prefixes past the buffer, bodies over "
      "the limit, an expired gRPC deadline: each gets the right 4xx (or `INVALID_ARGUMENT`, "
      "`OUT_OF_RANGE`, `DEADLINE_EXCEEDED`) with a message naming the field, never a 5xx; no "
      "length is trusted before the bytes are there, so nothing is allocated by a claimed size.")
    w("- Limits, explicit (`gogrid_serve::Limits`): a REST body of at most 64 MiB, a gRPC message "
      "of at most 64 MiB each way (tonic's 4 MiB default is too small for batches), JSON nesting "
      "of at most 128 levels (serde_json), at most 1024 requests queued per model version and 10 s "
      "in the queue (then 429 with Retry-After), 2 s at the throttle gate (then 429).")
    w("- Fuzzing: `make fuzz` runs the REST body, binary-extension split, raw tensor decode and gRPC request targets "
      "10 minutes each; `make test` a 30 s pass of each. A crashing input becomes a regression test.")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("make reliability   # hack/reliability.sh: catalogue, faults, lifecycle at full length (~35 min)")
    w("make soak          # the same plus the 30-minute soak")
    w("e2e/run-tests.sh faults lifecycle   # the CI lengths")
    w("```")
    w("")
    with open(out, "w") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
