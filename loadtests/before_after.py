"""Before/after in one run: the service before issue 23 (commit 71c48bd: an ingress deployment and
the model deployment, one Ray call per text) and this checkout's, started one at a time and
alternated, under the same closed-loop one-text clients, full model.

    git archive 71c48bd | tar -x -C /tmp/old     # the old tree; a format-1 bundle for it in /tmp/bundles/et
    python loadtests/before_after.py             # and a format-2 one (`dihs calibrate`) in /tmp/bundles/et2

A measurement script for the record of docs/path/before-after.json, not part of the package API.
"""

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from loadtests.common import drive, held_out
from loadtests.path_bench import _bodies, _closed_loop
from loadtests.sweep import free_port

VARIANTS = {
    "before": ("/tmp/old", "dihs_model.cli", "/tmp/bundles/et"),
    "after": (os.getcwd(), "dihs_cli", "/tmp/bundles/et2"),
}


def start(tree, mod, bundle):
    port, mport = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DIHS_METRICS_PORT": str(mport), "PYTHONPATH": tree}
    main = (
        (
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"from {mod}.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        if mod == "dihs_cli"
        else (
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from dihs_model.cli import main; sys.exit(main(sys.argv[1:]))"
        )
    )
    log = open(f"/tmp/ba_{os.path.basename(tree)}.log", "a")
    p = subprocess.Popen(
        [sys.executable, "-c", main, "serve", bundle, "--port", str(port)],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("not ready")


def stop(p):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(45)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
    time.sleep(3)


def main():
    texts = [t for t, _ in held_out("election-tweets")][:512]
    rows = []
    for rnd in range(2):
        for name, (tree, mod, bundle) in VARIANTS.items():
            p, url = start(tree, mod, bundle)
            try:
                body = _bodies(texts, 1, {"mode": "dense"})
                drive(_closed_loop(url + "/v1/classify", body, 4, 3.0, 0.0, False))
                sat = drive(_closed_loop(url + "/v1/classify", body, 32, 12.0, 3.0, False))
                idle = drive(_closed_loop(url + "/v1/classify", body, 1, 6.0, 1.0, False))
            finally:
                stop(p)
            rows.append(
                {
                    "round": rnd,
                    "variant": name,
                    "texts_per_s": sat["texts_per_s"],
                    "errors": sat["errors"],
                    "p50_ms": sat["latency_p50_ms"],
                    "idle_p50_ms": idle["latency_p50_ms"],
                    "load": os.getloadavg(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "before_after.json", "w"), indent=1)


if __name__ == "__main__":
    main()
