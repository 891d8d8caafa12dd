"""A bounded soak: `dihs serve` under steady Locust load at a share of its measured capacity for
--minutes, the memory (RSS) and open file descriptors of every process of the service (the driver and
all of Ray's: GCS, raylet, agents, Serve's controller and proxy, the replicas) sampled every --sample-s.

    python -m loadtests.soak bundles/default --out results/soak --minutes 10 --load 0.7

Capacity: texts/s answered by 8 closed-loop clients sending one text at a time for 20 s. The load is
--load x capacity, spread over --users Locust users. Growth is judged after a warm-up (the first
--warmup-s): a process passes if its RSS grew by at most --rss-bound (relative) and its descriptors
by at most --fd-bound. Writes OUT/soak.json (samples and verdicts) and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from .common import held_out
from .faults import outcomes, steady_locust
from .shapes import make_plan
from .sweep import Service, http_json, run_locust, session_pids


def capacity(url: str, texts: list[str], seconds: float = 20.0, clients: int = 8) -> float:
    """Texts per second answered by `clients` closed-loop clients, one text per request."""
    done, stop = [0], time.monotonic() + seconds

    def client(k: int):
        i = k
        while time.monotonic() < stop:
            if http_json(f"{url}/v1/classify", {"text": texts[i % len(texts)]}, timeout=60)[0] == 200:
                done[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / seconds


def sample(session: int) -> dict[int, dict]:
    import psutil

    out = {}
    for pid in session_pids(session):
        try:
            p = psutil.Process(pid)
            out[pid] = {"name": " ".join(p.cmdline())[:80], "rss": p.memory_info().rss, "fds": p.num_fds()}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def verdicts(
    samples: list[tuple[float, dict]], warmup_s: float, rss_bound: float, fd_bound: int
) -> list[dict]:
    """Per process alive from the end of the warm-up to the end: RSS and descriptors then and at the end."""
    after = [(t, s) for t, s in samples if t >= warmup_s]
    if len(after) < 2:
        return []
    (_, first), (_, last) = after[0], after[-1]
    rows = []
    for pid in sorted(set(first) & set(last)):
        peak = max(s[pid]["rss"] for _, s in after if pid in s)
        a, b = first[pid], last[pid]
        growth = (b["rss"] - a["rss"]) / max(1, a["rss"])
        rows.append(
            {
                "pid": pid,
                "process": a["name"],
                "rss_mib": [round(a["rss"] / 2**20, 1), round(b["rss"] / 2**20, 1)],
                "rss_peak_mib": round(peak / 2**20, 1),
                "rss_growth": round(growth, 4),
                "fds": [a["fds"], b["fds"]],
                "ok": growth <= rss_bound and b["fds"] - a["fds"] <= fd_bound,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", default="bundles/default")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.7, help="share of the measured capacity offered")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=120.0)
    p.add_argument(
        "--rss-bound", type=float, default=0.10, help="largest relative RSS growth after the warm-up"
    )
    p.add_argument(
        "--fd-bound", type=int, default=16, help="most descriptors a process may gain after the warm-up"
    )
    p.add_argument("--data", default="election-tweets")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    service = Service(a.bundle, 250.0, out / "service.log")
    seconds = a.minutes * 60
    report: dict = {
        "bundle": a.bundle,
        "minutes": a.minutes,
        "load": a.load,
        "users": a.users,
        "bounds": {"rss_growth": a.rss_bound, "fds": a.fd_bound, "after_s": a.warmup_s},
    }
    samples: list[tuple[float, dict]] = []
    try:
        service.wait_ready()
        texts = [t for t, _ in held_out(a.data)]
        cap = capacity(service.url, texts)
        rate = a.load * cap / a.users
        report.update(capacity_texts_per_s=round(cap, 2), user_rate=round(rate, 3))
        print(
            f"capacity {cap:.1f} texts/s: {a.users} users x {rate:.2f} req/s for {a.minutes:g} min",
            flush=True,
        )
        prefix = out / "locust"
        cmd = steady_locust(service.url, prefix, a.data, a.users, rate, seconds)
        t0, nxt = time.monotonic(), [0.0]

        def tick():
            now = time.monotonic() - t0
            if now >= nxt[0]:
                samples.append((round(now, 1), sample(service.proc.pid)))
                nxt[0] = now + a.sample_s

        run_locust(cmd, out / "locust.log", make_plan("steady", (a.users,), seconds), tick)
        report.update(outcomes(Path(f"{prefix}_events.csv")))
    finally:
        service.stop()
    rows = verdicts(samples, a.warmup_s, a.rss_bound, a.fd_bound)
    report.update(
        processes=rows,
        all_within_bounds=bool(rows) and all(r["ok"] for r in rows),
        samples=[{"t": t, **{str(pid): [v["rss"], v["fds"]] for pid, v in s.items()}} for t, s in samples],
    )
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return report


if __name__ == "__main__":
    main()
