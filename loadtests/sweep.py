"""`dihs loadtest`: how much load each way of serving takes within the latency objective, and what
accuracy it pays.

Open loop (loadtests/open_loop.py and the locustfile's OpenLoopUser): requests start at Poisson (or
constant) times at a set offered rate whatever the latency. A short probe finds dense float32's
capacity on this machine; then a grid of offered rates from 0.5x to 2.5x of it runs for every mode
(dense and adaptive in float32 and in the service's default dtype, static width at half the FLOPs),
modes interleaved and repeated over rounds; then each trace (loadtests/traces/*.csv or --trace FILE)
once per mode.

The budget is a per-request parameter, so one `dihs serve` serves every mode of its dtype; the
default-dtype modes get a second service (DIHS_DTYPE=auto: what a user who sets nothing gets, the
choice and its reason recorded in runs.json and the summary), started after the float32 one is
stopped, and rounds alternate the order so a round costs one restart. The model
replica is pinned to a core of its own, the proxy, Ray and Locust to the others (placement.py).

Writes DIR/sweep.csv (one row per mode x trace x round x segment), DIR/sweep.png, DIR/summary.md,
DIR/runs.json (settings, capacities, per-run schedule) and DIR/raw/ (arrivals, per-request events, logs).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.ports import free_port

from .common import BUDGETS, MODES, held_out, task_of
from .open_loop import (
    SEGMENT_FIELDS,
    TRACES,
    Segment,
    arrivals,
    capacity,
    grid_segments,
    read_trace,
    segment_rows,
    trace_segments,
)
from .placement import pin_client, pin_service, split_cores
from .report import combined, findings, plot, trace_totals, write_summary
from .stats import read_events

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WARMUP_REQUESTS = 30
# An adaptive run's warm-up lasts at least this long: the controller may still hold the cheap plan the
# run before asked for (any mode's traffic feeds it), for its window and hold (ControllerConfig.window_s
# + hold_s = 5 s), and the run's first, lowest rate would measure that transient instead of low load
# (seen: auto at FLOPs 0.46 at half dense's capacity after a 145 req/s run; with the controller's
# overhead now refreshed after a quiet spell, still the first 16 requests at 10.6 req/s on the 0.5
# cascade right after dense's 52.8 req/s run, without this settle)
SETTLE_S = 6.0
ROW_FIELDS = ("mode", "trace", "round", *SEGMENT_FIELDS)
MODE_TEXT = {
    "dense": "the full model, float32",
    "dense-default": "the full model in the service's default dtype (`--dtype auto`)",
    "f50": "fixed width at 50% of the FLOPs, float32",
    "auto": "adaptive width (load and input pick it), float32",
    "auto-default": "adaptive width, the service's default dtype",
}
# steps of 0.1x from 0.5x: the probe's short steps overrate dense (its 99% capacity has come out at
# 0.7-0.9x of the probe), so a grid with 0.2x steps below 1x put that capacity on 0.7x or 0.9x only
# up to 4x: a faster default dtype (int8, bfloat16) held 2.5x, the old grid's top, at 100%
FULL_GRID = (*(round(0.5 + k / 10, 1) for k in range(16)), 2.25, 2.5, 3.0, 3.5, 4.0)
QUICK_GRID = (0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Config:
    grid: tuple[float, ...]  # offered rates as multiples of dense's probed capacity
    segment_seconds: float
    gap_seconds: float
    rounds: int
    probe_steps: int
    probe_seconds: float
    traces: tuple[str, ...]  # trace CSVs, each run once per mode after the grid
    trace_load: float  # a trace's mean offered rate, as a multiple of dense's probed capacity
    minute_seconds: float  # seconds a trace's 60-second row lasts in the replay
    arrival: str
    max_rps: float


FULL = Config(
    grid=FULL_GRID,
    segment_seconds=4.0,
    gap_seconds=0.5,
    rounds=2,
    probe_steps=8,
    probe_seconds=3.0,
    traces=(str(TRACES / "spike.csv"),),
    trace_load=1.2,
    minute_seconds=5.0,
    arrival="poisson",
    max_rps=400.0,
)
QUICK = Config(
    grid=QUICK_GRID,
    segment_seconds=3.0,
    gap_seconds=1.0,
    rounds=1,
    probe_steps=5,
    probe_seconds=2.0,
    traces=(),
    trace_load=1.2,
    minute_seconds=3.0,
    arrival="poisson",
    max_rps=300.0,
)


def _usage_error(msg: str) -> Exception:
    from dihs_cli.common import UsageError

    return UsageError(msg)


def config_from_args(a) -> Config:
    base = QUICK if a.quick else FULL
    pick = lambda given, default: default if given is None else given  # noqa: E731
    try:
        grid = tuple(float(x) for x in a.grid.split(",") if x.strip()) if a.grid else base.grid
    except ValueError:
        raise _usage_error(
            f"--grid must be comma-separated numbers (multiples of dense's capacity), got {a.grid!r}"
        ) from None
    cfg = Config(
        grid=grid,
        segment_seconds=pick(a.segment_seconds, base.segment_seconds),
        gap_seconds=pick(a.gap_seconds, base.gap_seconds),
        rounds=pick(a.rounds, base.rounds),
        probe_steps=base.probe_steps,
        probe_seconds=base.probe_seconds,
        traces=tuple(a.trace) if a.trace else base.traces,
        trace_load=pick(a.trace_load, base.trace_load),
        minute_seconds=pick(a.minute_seconds, base.minute_seconds),
        arrival=a.arrival,
        max_rps=pick(a.max_rps, base.max_rps),
    )
    if not grid or any(not g > 0 for g in grid):
        raise _usage_error(f"--grid needs multiples above 0, got {a.grid!r}")
    if not cfg.segment_seconds > 0 or cfg.gap_seconds < 0:
        raise _usage_error("--segment-seconds must be above 0 and --gap-seconds at least 0")
    if cfg.rounds < 1:
        raise _usage_error(f"--rounds must be 1 or more, got {cfg.rounds}")
    for name, v in (
        ("--trace-load", cfg.trace_load),
        ("--minute-seconds", cfg.minute_seconds),
        ("--max-rps", cfg.max_rps),
    ):
        if not v > 0:
            raise _usage_error(f"{name} must be above 0, got {v:g}")
    for t in cfg.traces:
        try:
            read_trace(t)
        except ValueError as e:
            raise _usage_error(f"--trace: {e}") from None
    return cfg


# --- the service -------------------------------------------------------------------------------


def http_json(url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if os.environ.get("DIHS_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['DIHS_API_KEY']}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


class Service:
    """`dihs serve` as a child process on free ports; stopped with Ctrl-C semantics (Ray shuts down
    cleanly)."""

    def __init__(self, bundle: str, slo_ms: float, log_path: Path, dtype: str | None = None):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DIHS_METRICS_PORT": str(self.metrics_port)}
        if dtype:
            env["DIHS_DTYPE"] = dtype
        self.log_path = log_path
        self.log = log_path.open("w")
        # Ctrl-C semantics even where this process was started with SIGINT ignored (a background job)
        main = (
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from dihs_cli.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        cmd = [
            sys.executable,
            "-c",
            main,
            "serve",
            bundle,
            "--port",
            str(self.port),
            "--slo-ms",
            f"{slo_ms:g}",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
                raise _usage_error(
                    f"the service did not start: {lines[-1] if lines else 'no output'} (log: {self.log_path})"
                )
            try:
                if http_json(f"{self.url}/v2/health/ready", timeout=2)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(1.0)
        raise _usage_error(f"the service was not ready within {timeout_s:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # dihs serve: serve.shutdown() + ray.shutdown()
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever of its Ray processes is left
            left = session_pids(self.proc.pid)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(3.0)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self.log.close()


def session_pids(sid: int) -> list[int]:
    """Processes of the session the service was started in (Ray's actors get process groups of their own)."""
    if not Path("/proc/self/stat").exists():  # not Linux: its process group at least
        try:
            os.killpg(sid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        return []
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after "pid (comm)": state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


def check_service(url: str, examples: list[tuple[str, str]]) -> list[str]:
    """The model's labels, from one answered request; fails in one line if unreachable or mislabelled."""
    try:
        status, body = http_json(
            f"{url}/v1/classify", {"text": examples[0][0], "budget": {"mode": "dense"}}, 60
        )
    except (OSError, ValueError) as e:
        raise _usage_error(f"no DIHS service answers at {url}: {e}") from None
    if status != 200:
        raise _usage_error(f"{url}/v1/classify answered HTTP {status}: is it a DIHS service?")
    labels = sorted(body["results"][0]["probabilities"])
    unknown = sorted({y for _, y in examples} - set(labels))
    if unknown:
        raise _usage_error(
            f"the data has labels the served model does not know: {unknown[:5]}; the model's: {labels}"
        )
    return labels


def warm_up(
    url: str, mode: str, examples: list[tuple[str, str]], n: int = WARMUP_REQUESTS, min_seconds: float = 0.0
) -> tuple[float | None, float]:
    """Sequential requests with budget `mode` (dense, static or adaptive), n of them and for at least
    `min_seconds`; returns the last answer's load pressure (0 once settled) and the sequential rate in
    requests per second."""
    pressure, t0, sent = None, time.perf_counter(), 0
    tail = examples[-n:]  # the tail: the runs themselves start at the head
    while sent < n or time.perf_counter() - t0 < min_seconds:
        text, _ = tail[sent % len(tail)]
        status, body = http_json(f"{url}/v1/classify", {"text": text, "budget": BUDGETS[mode]}, 60)
        sent += 1
        if status == 200:
            pressure = body["results"][0]["pressure"]
    return pressure, sent / (time.perf_counter() - t0)


# --- one Locust run ------------------------------------------------------------------------------


def run_locust(cmd: list[str], log_path: Path, plan, tick=None) -> None:
    """Locust as a subprocess, killed past plan.duration + 90 s; a failed run is one line."""
    root = str(Path(__file__).resolve().parent.parent)  # so the locustfile imports `loadtests` from anywhere
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        t0, limit = time.monotonic(), plan.duration + 90
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > limit:
                    raise _usage_error(f"locust ran past {limit:.0f} s (log: {log_path})")
                if tick:
                    tick()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        raise _usage_error(
            f"locust failed (exit {proc.returncode}): {lines[-1] if lines else ''} (log: {log_path})"
        )


@dataclass(frozen=True)
class OpenRun:
    """One open-loop run: a schedule of segments replayed against one service in one mode."""

    name: str
    mode: str
    trace: str
    round: int
    segments: tuple[Segment, ...]

    @property
    def duration(self) -> float:
        return self.segments[-1].end


def open_loop(
    run: OpenRun,
    url: str,
    raw: Path,
    data: tuple[str, str, str],
    arrival: str,
    slo_ms: float,
    seed: int,
    tick=None,
) -> tuple[list[dict], dict]:
    """Warm up, replay the run's arrivals with OpenLoopUser; (segment rows, the run's record for
    runs.json)."""
    t_run = time.monotonic()
    budget = MODES[run.mode][1]
    pressure, seq_rps = warm_up(
        url, budget, data_examples(data), min_seconds=SETTLE_S if budget == "adaptive" else 0.0
    )
    sched = arrivals(list(run.segments), arrival, seed)
    (raw / f"{run.name}_arrivals.json").write_text(json.dumps(sched))
    spec, text_col, label_col = data
    prefix = raw / run.name
    cmd = [
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
        "30",
        "--budget",
        MODES[run.mode][1],
        "--data",
        spec,
        "--text-column",
        text_col,
        "--label-column",
        label_col,
        "--arrivals",
        str(raw / f"{run.name}_arrivals.json"),
        "--drain-seconds",
        "60",
        "--events-csv",
        f"{prefix}_events.csv",
        "OpenLoopUser",
    ]
    run_locust(cmd, raw / f"{run.name}.log", run, tick)
    scheduled = [0] * len(run.segments)
    for _, i in sched:
        scheduled[i] += 1
    rows = [
        {"mode": run.mode, "trace": run.trace, "round": run.round, **r}
        for r in segment_rows(
            read_events(Path(f"{prefix}_events.csv")), list(run.segments), slo_ms, scheduled
        )
    ]
    record = {
        "run": run.name,
        "mode": run.mode,
        "trace": run.trace,
        "round": run.round,
        "seed": seed,
        "segments": [[s.start, s.end, s.rate] for s in run.segments],
        "scheduled": scheduled,
        "warmup_pressure": pressure,
        "warmup_rps": round(seq_rps, 1),
        "wall_s": round(time.monotonic() - t_run, 1),
    }
    return rows, record


_EXAMPLES: dict[tuple, list] = {}


def data_examples(data: tuple[str, str, str]) -> list[tuple[str, str]]:
    if data not in _EXAMPLES:
        _EXAMPLES[data] = held_out(*data)
    return _EXAMPLES[data]


# --- the command -----------------------------------------------------------------------------------


def write_report(out: Path, rows: list[dict], meta: dict, records: list[dict]) -> None:
    """sweep.csv, sweep.png, summary.md and runs.json from the per-segment rows of every run."""
    with (out / "sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    comb = combined(rows)
    found = findings(comb)
    plot(out / "sweep.png", comb, meta["slo_ms"])
    write_summary(out / "summary.md", meta, comb, found, trace_totals(rows), records)
    (out / "runs.json").write_text(json.dumps({"meta": meta, "findings": found, "runs": records}, indent=1))


def rebuild_report(out: Path) -> None:
    """The report again from DIR/runs.json and DIR/raw/*_events.csv, running nothing (after a change of
    report)."""
    try:
        runs = json.loads((out / "runs.json").read_text())
        meta, records = runs["meta"], runs["runs"]
        rows = []
        for r in records:
            segs = [Segment(*s) for s in r["segments"]]
            events = read_events(out / "raw" / f"{r['run']}_events.csv")
            rows += [
                {"mode": r["mode"], "trace": r["trace"], "round": r["round"], **x}
                for x in segment_rows(events, segs, meta["slo_ms"], r["scheduled"])
            ]
    except (OSError, ValueError, KeyError) as e:
        raise _usage_error(f"--report-only needs a finished sweep in {out}: {e}") from None
    write_report(out, [r for r in rows if r["trace"] != "probe"], meta, records)


def _service_config(url: str, model_name: str) -> dict:
    """The service's /v2/models/{name}/config ({} where it does not answer it)."""
    try:
        status, body = http_json(f"{url}/v2/models/{model_name}/config", timeout=10)
    except (OSError, ValueError):
        return {}
    return body if status == 200 else {}


def plan_runs(
    modes: list[str], cfg: Config, grid_rates: list[float], trace_rows: dict[str, list]
) -> list[tuple[str, OpenRun]]:
    """(dtype, run) in the order they run: per round the dtypes alternate (float32 int8, then int8 float32)
    so a round costs one restart; the traces once per mode at the end, the last dtype first."""
    dtypes = list(dict.fromkeys(MODES[m][0] for m in modes))
    out: list[tuple[str, OpenRun]] = []
    grid = tuple(grid_segments(grid_rates, cfg.segment_seconds, cfg.gap_seconds))
    for r in range(cfg.rounds):
        for dt in dtypes if r % 2 == 0 else dtypes[::-1]:
            for m in (m for m in modes if MODES[m][0] == dt):
                out.append((dt, OpenRun(f"{m}-grid-r{r + 1}", m, "grid", r + 1, grid)))
    last = out[-1][0] if out else dtypes[0]
    for name, segs in trace_rows.items():
        for dt in sorted(dtypes, key=lambda d: d != last):
            for m in (m for m in modes if MODES[m][0] == dt):
                out.append((dt, OpenRun(f"{m}-{name}", m, name, 1, tuple(segs))))
    return out


def run_sweep(a) -> Path:
    if getattr(a, "report_only", False):
        rebuild_report(Path(a.out))
        print((Path(a.out) / "summary.md").read_text())
        return Path(a.out)
    if importlib.util.find_spec("locust") is None:
        raise _usage_error("dihs loadtest needs locust: pip install locust (or the project's dev extra)")
    cfg = config_from_args(a)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise _usage_error(f"--out {out} is a file, not a folder")
    if a.slo_ms <= 0:
        raise _usage_error(f"--slo-ms must be above 0, got {a.slo_ms:g}")
    modes = list(dict.fromkeys(a.modes))
    if "dense" not in modes:
        raise _usage_error("--modes must include dense: the rate grid is built around its capacity")
    bundle = a.bundle or os.environ.get("DIHS_BUNDLE", "bundles/default")
    if not a.url and not (Path(bundle) / "dihs.json").is_file():
        raise _usage_error(
            f"no bundle at {bundle}: train one (dihs train) or pass --url of a running service"
        )
    data = task_of(a.data, a.text_column, a.label_column, None if a.url else bundle)
    examples = data_examples(data)  # DataError: one line
    if a.url:
        check_service(a.url.rstrip("/"), examples)  # before anything is written
        served = _service_config(a.url.rstrip("/"), a.model_name).get("dtype", "float32")
        other = [m for m in modes if MODES[m][0] not in (served, "auto")]
        if other:
            raise _usage_error(
                f"the service at --url runs {served}: --modes {' '.join(other)} need another dtype "
                "(leave out --url to have both started here)"
            )
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    t_start, loadavg_start = time.monotonic(), os.getloadavg()[0]
    say = (
        (lambda *_: None)
        if a.quiet
        else (lambda msg: print(f"[{time.monotonic() - t_start:4.0f} s] {msg}", file=sys.stderr, flush=True))
    )
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    client_place = pin_client()
    service, dtype, placement, services, choices = None, None, client_place, [], {}
    rows, records = [], []

    def use(dt: str) -> str:
        nonlocal service, dtype, placement
        if a.url:
            return a.url.rstrip("/")
        if dt != dtype:
            if service is not None:
                say(f"stopping the {dtype} service ...")
                service.stop()
            say(f"starting `DIHS_DTYPE={dt} dihs serve {bundle}` on a free port ...")
            service = Service(bundle, a.slo_ms, raw / f"service-{dt}-{len(services) + 1}.log", dtype=dt)
            service.wait_ready()
            dtype = dt
            services.append(dt)
            choices[dt] = _service_config(service.url, "dihs").get("dtype_choice", {}).get("reason")
            check_service(service.url, examples)
            placement = pin_service(session_pids(service.proc.pid)) if split_cores() else "not pinned"
            say(f"placement: {placement}")
        return service.url

    try:
        url = use(MODES["dense"][0])
        _, seq_rps = warm_up(url, "dense", examples)
        start = min(0.6 * seq_rps, cfg.max_rps / 1.3 ** (cfg.probe_steps - 1))
        probe_rates = [round(start * 1.3**k, 2) for k in range(cfg.probe_steps)]
        # the first rate twice: its first segment is Locust's own start (its first connections and
        # greenlets; one 282 ms answer there once made the probe fail at a rate dense held), not counted
        probe = OpenRun(
            "dense-probe",
            "dense",
            "probe",
            0,
            tuple(grid_segments(probe_rates[:1] + probe_rates, cfg.probe_seconds, cfg.gap_seconds)),
        )
        say(f"probing dense's capacity at {', '.join(f'{r:g}' for r in probe_rates)} req/s ...")
        probe_rows, rec = open_loop(probe, url, raw, data, cfg.arrival, a.slo_ms, seed=0)
        records.append(rec)
        # one missing rate between two that hold is passed over: 2 slow answers of 71 in a 3-s segment
        # once put dense at 21.1 req/s, a rate it held at 100% up to 52.8 in the grid that followed
        cap = capacity(probe_rows[1:], blips=1)
        probe_cap = float(cap["offered_rps"]) if cap else probe_rates[0] / 1.3
        say(f"dense capacity (probe): {probe_cap:.1f} req/s")
        grid_rates = [round(min(g * probe_cap, cfg.max_rps), 2) for g in cfg.grid]
        trace_rows = {
            Path(t).stem: trace_segments(read_trace(t), cfg.trace_load * probe_cap, cfg.minute_seconds / 60)
            for t in cfg.traces
        }
        plan = plan_runs(modes, cfg, grid_rates, trace_rows)
        say(f"{len(plan)} runs: {' '.join(r.name for _, r in plan)}")
        for k, (dt, run) in enumerate(plan, 1):
            url = use(dt)
            # the same seed for every mode of a round and trace: the same arrival times and the same examples
            seed = run.round * 1000 + zlib.crc32(run.trace.encode()) % 1000
            got, rec = open_loop(run, url, raw, data, cfg.arrival, a.slo_ms, seed=seed)
            rows += got
            records.append(rec)
            worst = min(got, key=lambda r: r["slo_attainment"] if not math.isnan(r["slo_attainment"]) else 2)
            say(
                f"[{k}/{len(plan)}] {run.name}: {sum(r['requests'] for r in got)} requests; "
                f"lowest SLO attainment {worst['slo_attainment']:.3f} at {worst['offered_rps']:g} req/s"
            )
    finally:
        if service is not None:
            say("stopping the service ...")
            service.stop()
    meta = {
        "command": shlex.join(["dihs", *sys.argv[1:]]),
        "started": started,
        "bundle": bundle if not a.url else a.url,
        "service": (
            f"the running service at {a.url}"
            if a.url
            else f"`dihs serve` started here per dtype ({' then '.join(services)}; "
            "default settings: 1 replica, 1 torch thread)"
        ),
        "data": data[0],
        "examples": len(examples),
        "slo_ms": a.slo_ms,
        "arrival": cfg.arrival,
        "probe_rates": probe_rates,
        "probe_seconds": cfg.probe_seconds,
        "probe_capacity": probe_cap,
        "grid": list(cfg.grid),
        "grid_rates": grid_rates,
        "segment_seconds": cfg.segment_seconds,
        "gap_seconds": cfg.gap_seconds,
        "rounds": cfg.rounds,
        "trace_load": cfg.trace_load,
        "minute_seconds": cfg.minute_seconds,
        "traces": list(cfg.traces),
        "settle_s": SETTLE_S,
        "order": [r.name for _, r in plan],
        "mode_text": MODE_TEXT,
        "dtype_choice": choices,  # per DIHS_DTYPE started: the service's dtype and why
        "placement": placement if placement.startswith("model replica") else f"{placement}; {client_place}",
        "wall_s": time.monotonic() - t_start,
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg()[0],
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), "
        "client and service on the same machine",
    }
    write_report(out, rows, meta, records)
    print((out / "summary.md").read_text())
    return out
