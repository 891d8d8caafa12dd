"""Faults under load: `dihs serve` with two replicas under steady Locust load, one replica's process
killed (SIGKILL) every --every seconds; every request counted by outcome.

    python -m loadtests.faults bundles/default --out results/faults --kills 4 --every 15

Outcomes, from the locustfile's one-row-per-request events CSV:
  answered  2xx
  refused   503 (the replica's back-pressure or drain: JSON, Retry-After)
  failed    any other HTTP status: a request in flight at a killed replica is answered by Ray's
            proxy with a 500 at once (tests/test_serve_faults.py)
  hung      no answer before Locust's network timeout (60 s), or a connection error
A kill waits until both replicas run (full capacity before each fault); replaced_after_s is the time
until Serve has started a new replica process (it then loads the bundle while the other replica
serves). Writes OUT/faults.json and prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

from .shapes import make_plan
from .stats import percentile
from .sweep import LOCUSTFILE, Service, run_locust, session_pids

REPLICA_TITLE = "ServeReplica:dihs:DIHSModel"
HUNG_MS = 59_000  # Locust users' network_timeout is 60 s


def replica_pids(session: int) -> list[int]:
    """Model replica processes of the service's session (Ray titles them ray::ServeReplica:APP:DEPLOYMENT)."""
    out = []
    for pid in session_pids(session):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if REPLICA_TITLE in title:
            out.append(pid)
    return sorted(out)


def outcomes(events_csv: Path) -> dict:
    counts, answered_ms = {"sent": 0, "answered": 0, "refused": 0, "failed": 0, "hung": 0}, []
    with events_csv.open() as fh:
        for row in csv.DictReader(fh):
            status, latency = int(row["status"] or 0), float(row["latency_ms"] or 0)
            counts["sent"] += 1
            if 200 <= status < 300:
                counts["answered"] += 1
                answered_ms.append(latency)
            elif status == 503:
                counts["refused"] += 1
            elif status == 0 or latency >= HUNG_MS:
                counts["hung"] += 1
            else:
                counts["failed"] += 1
                counts.setdefault("failed_by_status", {}).setdefault(str(status), 0)
                counts["failed_by_status"][str(status)] += 1
    counts["answered_ms"] = {f"p{q}": round(percentile(answered_ms, q), 1) for q in (50, 99)}
    counts["answered_ms"]["max"] = max(answered_ms, default=None)
    return counts


def steady_locust(
    url: str, prefix: Path, data: str, users: int, user_rate: float, seconds: float
) -> list[str]:
    """The Locust command of a steady load: `users` ClassifyUsers (adaptive budgets, one labelled text per
    request) at `user_rate` requests/s each for `seconds`; one row per request in PREFIX_events.csv."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        url,
        "--headless",
        "--only-summary",
        "--csv",
        str(prefix),
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "60",
        "--budget",
        "adaptive",
        "--data",
        data,
        "--user-rate",
        f"{user_rate:g}",
        "--shape",
        "steady",
        "--shape-users",
        str(users),
        "--stage-seconds",
        f"{seconds:g}",
        "--events-csv",
        f"{prefix}_events.csv",
        "ClassifyUser",
    ]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", default="bundles/default")
    p.add_argument("--out", required=True)
    p.add_argument("--kills", type=int, default=4)
    p.add_argument(
        "--every", type=float, default=15.0, help="seconds between kills (the first after one period)"
    )
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--user-rate", type=float, default=2.0)
    p.add_argument("--data", default="election-tweets")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["DIHS_REPLICAS"] = "2"  # `dihs serve` reads its settings' environment too
    seconds = a.every * (a.kills + 1) + 30
    service = Service(a.bundle, 250.0, out / "service.log")
    report: dict = {
        "bundle": a.bundle,
        "replicas": 2,
        "users": a.users,
        "user_rate": a.user_rate,
        "every_s": a.every,
        "kills": [],
    }
    try:
        service.wait_ready()
        prefix = out / "locust"
        cmd = steady_locust(service.url, prefix, a.data, a.users, a.user_rate, seconds)
        t0 = time.monotonic()
        state = {"next": t0 + a.every}

        def tick():
            now, pids = time.monotonic(), replica_pids(service.proc.pid)
            last = report["kills"][-1] if report["kills"] else None
            if last and last["replaced_after_s"] is None and len(pids) >= 2 and last["pid"] not in pids:
                last["replaced_after_s"] = round(now - t0 - last["at_s"], 1)
                print(f"  two replica processes again after {last['replaced_after_s']} s", flush=True)
            # the next kill once its time has come and both replicas run (full capacity before each fault)
            if len(report["kills"]) >= a.kills or now < state["next"] or len(pids) < 2:
                return
            victim = pids[len(report["kills"]) % len(pids)]
            os.kill(victim, signal.SIGKILL)
            report["kills"].append({"at_s": round(now - t0, 1), "pid": victim, "replaced_after_s": None})
            print(f"killed replica pid {victim} at {now - t0:.1f} s", flush=True)
            state["next"] = now + a.every

        run_locust(cmd, out / "locust.log", make_plan("steady", (a.users,), seconds), tick)
        report.update(outcomes(Path(f"{prefix}_events.csv")))
    finally:
        service.stop()
    (out / "faults.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
