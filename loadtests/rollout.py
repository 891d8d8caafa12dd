"""A bundle rollout under steady Locust load, every request counted, and the answers' bundle watched.

    python -m loadtests.rollout bundles/default /tmp/r8/bundle --out OUT --how inplace
    python -m loadtests.rollout bundles/default /tmp/r8/bundle --out OUT --how restart

Ray and Serve start in this process (one replica). `inplace`: the application is deployed from a
Serve config (what `serve deploy` sends) and the rollout changes only its user_config `bundle`: the
running replica loads, probes and swaps in the new bundle (service/replica.py). `restart`: the
application comes from `serve.run` and the rollout is another `serve.run` with the new bundle: Serve
starts a new replica, then drains and stops the old one. A watcher reads X-DIHS-Bundle every 0.25 s.
Outcomes as loadtests.faults counts them; writes OUT/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

from service.ports import free_port

from .faults import outcomes, steady_locust
from .shapes import make_plan
from .sweep import run_locust


def _deploy(how: str, first: str, bundle: str) -> None:
    """Deploy `bundle`; `first` is the bundle of the first deploy (inplace: the args, which stay the same)."""
    from ray import serve

    if how == "restart":
        from service.app import build_app

        serve.run(build_app({"bundle": bundle}), name="dihs", route_prefix="/")
        return
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = {
        "applications": [
            {
                "name": "dihs",
                "route_prefix": "/",
                "import_path": "service.app:build_app",
                "args": {"bundle": os.path.abspath(first)},
                "deployments": [{"name": "DIHSModel", "user_config": {"bundle": os.path.abspath(bundle)}}],
            }
        ]
    }
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)


def _bundle_of(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            return r.headers.get("x-dihs-bundle")
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--out", required=True)
    p.add_argument("--how", choices=("inplace", "restart"), default="inplace")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--user-rate", type=float, default=2.0)
    p.add_argument("--at", type=float, default=20.0, help="seconds into the load when the rollout starts")
    p.add_argument("--seconds", type=float, default=80.0)
    p.add_argument("--data", default="election-tweets")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import ray
    from ray import serve

    from service.app import ray_env
    from service.settings import Settings

    env = {"RAY_AUTH_MODE": "disabled", **ray_env(Settings())}
    os.environ.update(env)
    port = free_port()
    ray.init(
        address="local",
        num_cpus=3,
        include_dashboard=False,
        logging_level="WARNING",
        _metrics_export_port=free_port(),
        runtime_env={"env_vars": env},
    )
    report: dict = {"old": a.old, "new": a.new, "how": a.how, "users": a.users, "user_rate": a.user_rate}
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False}
        )
        url = f"http://127.0.0.1:{port}"
        _deploy(a.how, a.old, a.old)
        report["old_id"] = _bundle_of(url)
        seen: list[tuple[float, str | None]] = []
        t0, stop = time.monotonic(), threading.Event()

        def watch():
            while not stop.is_set():
                seen.append((round(time.monotonic() - t0, 2), _bundle_of(url)))
                time.sleep(0.25)

        def rollout():
            report["rollout_started_s"] = round(time.monotonic() - t0, 1)
            _deploy(a.how, a.old, a.new)
            report["rollout_returned_s"] = round(time.monotonic() - t0, 1)

        roller = threading.Thread(target=rollout)
        watcher = threading.Thread(target=watch, daemon=True)

        def tick():
            if not roller.is_alive() and "rollout_started_s" not in report and time.monotonic() - t0 >= a.at:
                roller.start()

        prefix = out / "locust"
        watcher.start()
        run_locust(
            steady_locust(url, prefix, a.data, a.users, a.user_rate, a.seconds),
            out / "locust.log",
            make_plan("steady", (a.users,), a.seconds),
            tick,
        )
        roller.join()
        stop.set()
        new = [t for t, b in seen if b and b != report["old_id"]]
        report.update(
            new_id=new and dict(seen)[new[0]],
            first_new_answer_s=new[0] if new else None,
            last_old_answer_s=max((t for t, b in seen if b == report["old_id"]), default=None),
            watcher_unanswered=sum(1 for _, b in seen if b is None),
        )
        report.update(outcomes(Path(f"{prefix}_events.csv")))
    finally:
        serve.shutdown()
        ray.shutdown()
    (out / "rollout.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
