"""Open-loop load as pure plans: segments of a set offered rate, their arrival times, and one row per segment.

Open loop: each request starts at its scheduled time whatever the latency of the others (the
locustfile's `OpenLoopUser` spawns one greenlet per arrival), so the offered rate is what was
asked even past saturation. A plan is a list of `Segment`s (start, end, rate); arrivals inside a
segment are Poisson (exponential gaps) or constant (evenly spaced) at its rate.

Traces are CSV files with columns `seconds,requests` (one row per period, e.g. per-minute counts
of a production log): `trace_segments` replays a trace with each row's duration multiplied by
`time_scale` and its rate scaled so that the mean offered rate is `mean_rps` (the trace gives
the shape, the sweep the level). loadtests/traces/ holds steady, step, spike and bursty.

A segment's row counts the requests scheduled inside it: latency is from the scheduled start
(the client's own lag included), SLO attainment is the share answered with 200 within the SLO
(503s, errors and timeouts are misses).
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from .stats import percentile

TRACES = Path(__file__).with_name("traces")
ARRIVALS = ("poisson", "constant")
SEGMENT_FIELDS = (
    "segment",
    "start_s",
    "end_s",
    "offered_rps",
    "sent_rps",
    "achieved_rps",
    "slo_attainment",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "lag_p99_ms",
    "error_rate",
    "rejected_rate",
    "rejected_no_retry_after",
    "unanswered",
    "accuracy",
    "flops_ratio",
    "heads_ratio",
    "requests",
)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds since the run started
    end: float
    rate: float  # offered requests per second

    @property
    def seconds(self) -> float:
        return self.end - self.start


def grid_segments(rates: list[float], seconds: float, gap: float = 0.0) -> list[Segment]:
    """One segment per rate, in order, `gap` idle seconds after each (lets a queue drain)."""
    if not seconds > 0 or gap < 0:
        raise ValueError(f"segment seconds must be above 0 and gaps at least 0, got {seconds:g} and {gap:g}")
    if not rates or any(not r > 0 for r in rates):
        raise ValueError(f"rates must be above 0, got {rates}")
    out, t = [], 0.0
    for r in rates:
        out.append(Segment(t, t + seconds, float(r)))
        t += seconds + gap
    return out


def read_trace(path: str | Path) -> list[tuple[float, float]]:
    """(seconds, requests) rows of a trace CSV; ValueError with a one-line message on a bad file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"trace file not found: {p}")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"seconds", "requests"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{p}: a trace needs the columns seconds,requests (got {reader.fieldnames})")
        try:
            rows = [(float(r["seconds"]), float(r["requests"])) for r in reader]
        except (TypeError, ValueError):
            raise ValueError(f"{p}: seconds and requests must be numbers") from None
    if not rows or any(s <= 0 or n < 0 for s, n in rows) or not sum(n for _, n in rows) > 0:
        raise ValueError(f"{p}: every row needs seconds > 0 and requests >= 0, and some requests in all")
    return rows


def trace_segments(
    rows: list[tuple[float, float]], mean_rps: float, time_scale: float = 1.0
) -> list[Segment]:
    """The trace replayed `time_scale` times as long, rates scaled to a mean of `mean_rps` (idle rows
    kept idle)."""
    total_s, total_n = sum(s for s, _ in rows), sum(n for _, n in rows)
    k = mean_rps / (total_n / total_s)
    out, t = [], 0.0
    for s, n in rows:
        d = s * time_scale
        out.append(Segment(t, t + d, k * n / s))
        t += d
    return out


def arrivals(segments: list[Segment], process: str = "poisson", seed: int = 0) -> list[tuple[float, int]]:
    """(scheduled time, segment index) of every request, sorted; Poisson or constant inside each segment."""
    if process not in ARRIVALS:
        raise ValueError(f"unknown arrival process {process!r}; choose from {', '.join(ARRIVALS)}")
    rng, out = random.Random(seed), []
    for i, s in enumerate(segments):
        if s.rate <= 0:
            continue
        if process == "constant":
            n = math.floor(s.seconds * s.rate + 1e-9)
            out += [(round(s.start + (j + 0.5) / s.rate, 4), i) for j in range(n)]
            continue
        t = s.start + rng.expovariate(s.rate)
        while t < s.end:
            out.append((round(t, 4), i))
            t += rng.expovariate(s.rate)
    return out


def _num(x) -> float | None:
    return None if x in (None, "") else float(x)


def segment_rows(
    events: list[dict], segments: list[Segment], slo_ms: float, scheduled: list[int] | None = None
) -> list[dict]:
    """One row per segment from the locustfile's events (values may be strings), over the requests it
    scheduled.

    achieved_rps: 200 answers over the time from the segment's start to its last answer (at least
    the segment), so a queue that drains after the segment lowers it; sent_rps: requests scheduled
    (the offered load as realised); unanswered: scheduled requests with no answer at all (timeouts,
    connection errors, and the `scheduled` requests of a segment that left no event: cut off after the
    drain)."""
    by: dict[int, list[dict]] = {}
    for e in events:
        if e.get("segment") not in (None, ""):
            by.setdefault(int(float(e["segment"])), []).append(e)
    rows = []
    for i, s in enumerate(segments):
        es = by.get(i, [])
        n = max(len(es), scheduled[i]) if scheduled else len(es)
        total = [float(e["latency_ms"]) + float(e.get("lag_ms") or 0) for e in es]
        ok = [(e, lat) for e, lat in zip(es, total) if int(float(e["ok"]))]
        lat = [x for _, x in ok]
        status = [int(float(e["status"])) for e in es]
        done = max((float(e["t"]) + x / 1000 for e, x in ok), default=s.end)
        checked = [int(float(e["correct"])) for e, _ in ok if _num(e.get("correct")) is not None]
        flops = [v for v in (_num(e.get("flops_ratio")) for e, _ in ok) if v is not None]
        heads = [v for v in (_num(e.get("heads_ratio")) for e, _ in ok) if v is not None]
        rows.append(
            {
                "segment": i,
                "start_s": round(s.start, 2),
                "end_s": round(s.end, 2),
                "offered_rps": round(s.rate, 3),
                "sent_rps": round(n / s.seconds, 3),
                "achieved_rps": round(len(ok) / max(s.seconds, done - s.start), 3),
                "slo_attainment": round(sum(x <= slo_ms for x in lat) / n, 4) if n else math.nan,
                "p50_ms": round(percentile(lat, 50), 1),
                "p95_ms": round(percentile(lat, 95), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "lag_p99_ms": round(percentile([float(e.get("lag_ms") or 0) for e in es], 99), 1),
                "error_rate": round((n - len(ok)) / n, 4) if n else 0.0,
                "rejected_rate": round(status.count(503) / n, 4) if n else 0.0,
                "rejected_no_retry_after": sum(
                    st == 503 and not _num(e.get("retry_after")) for st, e in zip(status, es)
                ),
                "unanswered": status.count(0) + n - len(es),
                "accuracy": round(sum(checked) / len(checked), 4) if checked else math.nan,
                "flops_ratio": round(statistics.fmean(flops), 4) if flops else math.nan,
                "heads_ratio": round(statistics.fmean(heads), 4) if heads else math.nan,
                "requests": n,
            }
        )
    return rows


def capacity(rows: list[dict], target: float = 0.99, blips: int = 0) -> dict | None:
    """The row of the highest offered rate before the first (by rate) with SLO attainment under `target`;
    with `blips` > 0, a run of at most that many missing rates is passed over when a higher rate holds
    the target again (the probe's short segments: a couple of slow answers in one are noise)."""
    best, missed = None, 0
    for r in sorted(rows, key=lambda r: float(r["offered_rps"])):
        a = float(r["slo_attainment"])
        if math.isnan(a) or a < target:
            missed += 1
            if missed > blips:
                break
            continue
        best, missed = r, 0
    return best
