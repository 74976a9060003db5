"""KServe Python ModelServer peer: an `identity` model over Open Inference Protocol v2 (REST).

Start (blocks; Ctrl-C / SIGTERM stops it):

    $(hack/reference-env.sh) bench/peers/kserve_identity.py --port 8080 [--workers 1] [--grpc-port 0]

It prints "kserve_identity: ready on http://127.0.0.1:PORT" on stderr once
GET /v2/health/ready answers 200 (about 2-4 s after start, mostly imports;
with --workers > 1 that is when the FIRST spawned worker is up, the others
follow within a second or so).
Then:

    curl -s localhost:8080/v2/health/ready            # 200, body {"ready": true}
    curl -s localhost:8080/v2/models/identity/infer -H 'content-type: application/json' \
      -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    # -> {"model_name":"identity","model_version":null,"id":"...","parameters":null,
    #     "outputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":null,"data":[1.0,2.0,3.0,4.0]}]}

The model copies every input tensor to an output of the same name, shape,
datatype and data (no numpy round trip), so what is measured is KServe's
serving overhead: uvicorn + FastAPI + KServe's v2 request decoding/validation,
its Prometheus histograms, and response encoding.

Serving setup, chosen to be fair to KServe:
  * kserve.ModelServer(http_port=PORT, workers=N, enable_grpc=False unless
    --grpc-port is given, enable_latency_logging=False).
  * KServe's own logging config, with the per-request loggers silenced:
    uvicorn.access (the access log) and kserve.trace at WARNING (also passed
    as kserve's log_config_file, so --workers > 1 children get it). Nothing
    is logged per request; start-up lines still go to stderr.
  * Event loop: KServe's default ("auto": uvloop, installed in the venv).
Our own flags are parsed first and sys.argv is cleared before kserve is
imported (kserve parses sys.argv at import time).
"""

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import atexit  # noqa: E402
import copy  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import urllib.request  # noqa: E402
import warnings  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description="KServe identity model server (OIP v2)")
    ap.add_argument("--port", type=int, default=8080, help="HTTP port")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--grpc-port", type=int, default=0, help="gRPC port; 0 (default) disables gRPC")
    return ap.parse_args()


A = parse_args()
sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import

import kserve  # noqa: E402
import kserve.model_server  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve import logging as klogging  # noqa: E402
from kserve.utils.utils import generate_uuid  # noqa: E402

# FastAPI warns once (first request) that KServe still uses ORJSONResponse.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
KSERVE_VERSION = importlib.metadata.version("kserve")


class Identity(kserve.Model):
    def __init__(self, name: str = "identity"):
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        outputs = [
            InferOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
            for i in payload.inputs
        ]
        # Same as KServe's own servers: echo the request id, or make one (the v2
        # response schema requires a string id).
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs)


def quiet_logging() -> None:
    """KServe's default log config with the per-request loggers (uvicorn.access,
    kserve.trace) at WARNING. Written to a JSON file and handed to kserve as
    --log_config_file too, so that with --workers > 1 the spawned worker
    processes (which reconfigure logging themselves) get the same config."""
    cfg = copy.deepcopy(klogging.KSERVE_LOG_CONFIG)
    cfg["loggers"]["uvicorn.access"]["level"] = "WARNING"
    cfg["loggers"]["kserve.trace"]["level"] = "WARNING"
    fd, path = tempfile.mkstemp(prefix="kserve-identity-log-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    kserve.model_server.args.log_config_file = path
    klogging.configure_logging(path)


def announce_when_ready(port: int) -> None:
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    while time.monotonic() - T_START < 120:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    print(f"kserve_identity: ready on http://127.0.0.1:{port} (kserve {KSERVE_VERSION}, "
                          f"workers {A.workers}, {time.monotonic() - T_START:.1f} s after start)",
                          file=sys.stderr, flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.05)
    print("kserve_identity: not ready after 120 s", file=sys.stderr, flush=True)


def main() -> None:
    quiet_logging()
    model = Identity("identity")
    server = kserve.ModelServer(
        http_port=A.port,
        grpc_port=A.grpc_port or A.port + 1,
        workers=A.workers,
        enable_grpc=bool(A.grpc_port),
        enable_latency_logging=False,
        enable_docs_url=False,
    )
    threading.Thread(target=announce_when_ready, args=(A.port,), daemon=True).start()
    server.start([model])


if __name__ == "__main__":
    main()
