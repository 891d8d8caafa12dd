"""`dihs loadtest`: how much throughput adaptive head budgets win, and what accuracy they cost, as load rises.

For each mode (dense, static = 50% of heads, adaptive = DIHS auto) the same step shape runs with
Locust (a `locust --headless` subprocess per run) against one service: started here on free
ports (`dihs serve`), or the one at --url. The budget is a per-request parameter, so one server
serves every mode; before each run 30 sequential warm-up requests in that mode drain the queue
and let the adaptive pressure fall back to 0. Rounds interleave the modes (A B C A B C).

Writes DIR/sweep.csv (one row per mode x round x stage), DIR/sweep.png, DIR/summary.md,
DIR/runs.json (settings, Locust's own totals, wall times) and DIR/raw/ (Locust's CSVs, the
per-request events, logs).
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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .common import BUDGETS, held_out
from .shapes import Plan, make_plan, parse_users
from .stats import ROW_FIELDS, combine, locust_totals, read_events, read_locust_stats, stage_rows

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MODES = tuple(BUDGETS)
TARGET_LOAD = 1.3  # the target: offered load 1.3x what dense sustains within the SLO
WARMUP_REQUESTS = 30


@dataclass(frozen=True)
class Config:
    users: tuple[int, ...]
    stage_seconds: float
    settle_seconds: float
    rounds: int
    user_rate: float


FULL = Config(users=(2, 4, 6, 8, 11, 14, 18, 23, 30), stage_seconds=13.0, settle_seconds=4.0, rounds=2, user_rate=2.0)
QUICK = Config(users=(2, 8, 16), stage_seconds=8.0, settle_seconds=3.0, rounds=1, user_rate=2.0)


def _usage_error(msg: str) -> Exception:
    from dihs_model.cli import UsageError

    return UsageError(msg)


def config_from_args(a) -> Config:
    base = QUICK if a.quick else FULL
    try:
        users = tuple(parse_users(a.users)) if a.users else base.users
        pick = lambda given, default: default if given is None else given  # noqa: E731
        cfg = Config(users=users, stage_seconds=pick(a.stage_seconds, base.stage_seconds),
                     settle_seconds=pick(a.settle_seconds, min(base.settle_seconds, (a.stage_seconds or 1e9) / 3)),
                     rounds=pick(a.rounds, base.rounds),
                     user_rate=pick(a.user_rate, base.user_rate))
        make_plan("step", list(cfg.users), cfg.stage_seconds)
    except ValueError as e:
        raise _usage_error(f"--users/--stage-seconds: {e}") from None
    if cfg.rounds < 1:
        raise _usage_error(f"--rounds must be 1 or more, got {cfg.rounds}")
    if not 0 <= cfg.settle_seconds < cfg.stage_seconds:
        raise _usage_error(f"--settle-seconds must be at least 0 and under --stage-seconds ({cfg.stage_seconds:g})")
    if not cfg.user_rate > 0:
        raise _usage_error(f"--user-rate must be above 0, got {cfg.user_rate:g}")
    return cfg


# --- the service -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
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
    """`dihs serve` as a child process on free ports; stopped with Ctrl-C semantics (Ray shuts down cleanly)."""

    def __init__(self, bundle: str, slo_ms: float, log_path: Path):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DIHS_METRICS_PORT": str(self.metrics_port)}
        self.log_path = log_path
        self.log = log_path.open("w")
        # Ctrl-C semantics even where this process was started with SIGINT ignored (a background job)
        main = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "from dihs_model.cli import main; sys.exit(main(sys.argv[1:]))")
        cmd = [sys.executable, "-c", main, "serve", bundle, "--port", str(self.port), "--slo-ms", f"{slo_ms:g}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
                raise _usage_error(f"the service did not start: {lines[-1] if lines else 'no output'} "
                                   f"(log: {self.log_path})")
            try:
                if _http(f"{self.url}/v2/health/ready", timeout=2)[0] == 200:
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
            left = _session_pids(self.proc.pid)
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


def _session_pids(sid: int) -> list[int]:
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
        status, body = _http(f"{url}/v1/classify", {"text": examples[0][0], "budget": {"mode": "dense"}}, 60)
    except (OSError, ValueError) as e:
        raise _usage_error(f"no DIHS service answers at {url}: {e}") from None
    if status != 200:
        raise _usage_error(f"{url}/v1/classify answered HTTP {status}: is it a DIHS service?")
    labels = sorted(body["results"][0]["probabilities"])
    unknown = sorted({y for _, y in examples} - set(labels))
    if unknown:
        raise _usage_error(f"the data has labels the served model does not know: {unknown[:5]}; the model's: {labels}")
    return labels


def warm_up(url: str, mode: str, examples: list[tuple[str, str]], n: int = WARMUP_REQUESTS) -> float | None:
    """Sequential requests in `mode`; returns the last answer's load pressure (0 once settled)."""
    pressure = None
    for text, _ in examples[-n:]:  # the tail: the runs themselves start at the head
        status, body = _http(f"{url}/v1/classify", {"text": text, "budget": BUDGETS[mode]}, 60)
        if status == 200:
            pressure = body["results"][0]["pressure"]
    return pressure


class Progress:
    """A tqdm bar over the planned seconds on a terminal; one line per change of stage otherwise (logs, CI)."""

    def __init__(self, total_s: float, quiet: bool = False):
        self.quiet, self.tty, self.last = quiet, sys.stderr.isatty(), ""
        self.bar = None
        if not quiet and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_s), unit="s", file=sys.stderr, mininterval=0.5,
                            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}]")

    def show(self, what: str, at_s: float | None = None, force: bool = False) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_description_str(what, refresh=False)
            if at_s is not None:
                self.bar.n = max(self.bar.n, min(round(at_s), self.bar.total))
            self.bar.refresh()
            if force:
                self.bar.write(what, file=sys.stderr)
        elif what != self.last or force:
            print(what, file=sys.stderr, flush=True)
        self.last = what

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()


# --- one Locust run ------------------------------------------------------------------------------

def locust_command(url: str, prefix: Path, mode: str, cfg: Config, data: tuple[str, str, str], route: str,
                   model_name: str) -> list[str]:
    spec, text_col, label_col = data
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", url, "--headless", "--only-summary",
            "--csv", str(prefix), "--exit-code-on-error", "0", "--loglevel", "WARNING",
            "--budget", mode, "--data", spec, "--text-column", text_col, "--label-column", label_col,
            "--model-name", model_name, "--user-rate", f"{cfg.user_rate:g}", "--shape", "step",
            "--shape-users", ",".join(map(str, cfg.users)), "--stage-seconds", f"{cfg.stage_seconds:g}",
            "--events-csv", f"{prefix}_events.csv", "ClassifyUser" if route == "v1" else "InferUser"]


def run_locust(cmd: list[str], log_path: Path, plan: Plan, tick=None) -> None:
    root = str(Path(__file__).resolve().parent.parent)  # so the locustfile imports `loadtests` from anywhere
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
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
        raise _usage_error(f"locust failed (exit {proc.returncode}): {lines[-1] if lines else ''} (log: {log_path})")


# --- the report ------------------------------------------------------------------------------------

def _fmt(x, nd=1) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _cell(c: dict, m: str, nd: int) -> str:
    v, lo, hi = c[m], c[m + "_min"], c[m + "_max"]
    if c["rounds"] < 2 or math.isnan(lo) or lo == hi:
        return _fmt(v, nd)
    return f"{_fmt(v, nd)} [{_fmt(lo, nd)}-{_fmt(hi, nd)}]"


def target_check(combined: list[dict], slo_ms: float) -> dict:
    """The issue's target: at ~1.3x the load dense sustains within the SLO, adaptive within it and dense not;
    at low load (the first stage) adaptive's accuracy within 0.5 point of dense."""
    by = {(c["mode"], c["stage"]): c for c in combined}
    stages = sorted({c["stage"] for c in combined})
    out: dict = {"slo_ms": slo_ms}
    dense_ok = [by[("dense", s)] for s in stages if ("dense", s) in by
                and by[("dense", s)]["p95_ms"] <= slo_ms and by[("dense", s)]["error_rate"] == 0]
    if dense_ok and ("adaptive", stages[0]) in by:
        best = max(dense_ok, key=lambda c: c["rps"])
        want = TARGET_LOAD * best["rps"]
        offered = [s for s in stages if (by[("dense", s)]["offered_rps"] or 0) >= want]
        out["dense_sustained_rps"] = best["rps"]
        out["dense_sustained_stage"] = best["stage"]
        out["target_offered_rps"] = round(want, 2)
        if offered:
            s = offered[0]
            d, a = by[("dense", s)], by[("adaptive", s)]
            out.update(stage=s, offered_rps=d["offered_rps"], dense_p95_ms=d["p95_ms"], adaptive_p95_ms=a["p95_ms"],
                       dense_rps=d["rps"], adaptive_rps=a["rps"],
                       held=bool(a["p95_ms"] <= slo_ms < d["p95_ms"]))
            if ("static", s) in by:
                out["static_p95_ms"] = by[("static", s)]["p95_ms"]
    d0, a0 = by.get(("dense", stages[0])), by.get(("adaptive", stages[0]))
    if d0 and a0:
        out["low_load_accuracy"] = {"dense": d0["accuracy"], "adaptive": a0["accuracy"],
                                    "held": bool(abs(a0["accuracy"] - d0["accuracy"]) <= 0.005)}
    return out


def write_summary(path: Path, meta: dict, combined: list[dict], check: dict, totals: list[dict]) -> None:
    slo = meta["slo_ms"]
    L = [f"# Load sweep: dense vs static vs adaptive ({meta['started']})", "",
         f"`{meta['command']}`: {meta['service']}; data `{meta['data']}` (held-out split, "
         f"{meta['examples']} examples, sent in one fixed shuffled order); route {meta['route']}; "
         f"step shape, users {', '.join(map(str, meta['users']))}, {meta['stage_seconds']:g} s each "
         f"(first {meta['settle_seconds']:g} s of a stage not counted); each user aims at "
         f"{meta['user_rate']:g} req/s, so offered load = users x {meta['user_rate']:g}; SLO {slo:g} ms; "
         f"{meta['rounds']} round(s), modes interleaved ({' '.join(meta['order'])}).", "",
         f"Machine: {meta['machine']}. Wall time {meta['wall_s']:.0f} s.", "",
         "Modes: dense = all heads; static = fixed 50% of heads; adaptive = DIHS auto (load pressure and input "
         "complexity pick the level). Values are medians over rounds, [min-max] when rounds differ. "
         "Latency over successful responses; errors = non-2xx or connection errors (503 back-pressure included).", "",
         "| mode | users | offered req/s | req/s | p50 ms | p95 ms | p99 ms | errors | accuracy | heads ratio | pressure |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(combined, key=lambda c: (MODES.index(c["mode"]), c["stage"])):
        L.append(f"| {c['mode']} | {c['users']} | {_fmt(c['offered_rps'], 0)} | {_cell(c, 'rps', 1)} | "
                 f"{_cell(c, 'p50_ms', 0)} | {_cell(c, 'p95_ms', 0)} | {_cell(c, 'p99_ms', 0)} | "
                 f"{_cell(c, 'error_rate', 3)} | {_cell(c, 'accuracy', 3)} | {_cell(c, 'heads_ratio', 2)} | "
                 f"{_cell(c, 'pressure', 2)} |")
    L += ["", "## The issue's target", ""]
    if "dense_sustained_rps" not in check:
        L.append(f"- dense met the {slo:g} ms p95 SLO at no stage: the target cannot be evaluated.")
    else:
        L.append(f"- dense sustained {check['dense_sustained_rps']:.1f} req/s within the SLO (users "
                 f"{meta['users'][check['dense_sustained_stage']]}); {TARGET_LOAD:g}x that is "
                 f"{check['target_offered_rps']:.1f} req/s offered.")
        if "stage" in check:
            L.append(f"- at the first stage offering at least that ({check['offered_rps']:g} req/s, users "
                     f"{meta['users'][check['stage']]}): dense p95 {check['dense_p95_ms']:.0f} ms at "
                     f"{check['dense_rps']:.1f} req/s, adaptive p95 {check['adaptive_p95_ms']:.0f} ms at "
                     f"{check['adaptive_rps']:.1f} req/s" + (f", static p95 {check['static_p95_ms']:.0f} ms"
                                                            if "static_p95_ms" in check else "")
                     + f". Adaptive within the SLO while dense is not: **{'held' if check['held'] else 'not held'}**.")
        else:
            L.append("- no stage offered that much load: extend --users to evaluate it.")
    if "low_load_accuracy" in check:
        la = check["low_load_accuracy"]
        L.append(f"- low load (first stage): accuracy dense {_fmt(la['dense'], 4)}, adaptive {_fmt(la['adaptive'], 4)}; "
                 f"within 0.5 point: **{'held' if la['held'] else 'not held'}**.")
    fails = sum(t["failures"] for t in totals)
    rejected = sum(t["rejected"] for t in totals)
    L.append(f"- failed requests over all runs (Locust's count): {fails}, of which 503 back-pressure: {rejected}.")
    L += ["", "## Locust's own totals per run", "",
          "| run | requests | failures | accuracy (CHECK row) | warm-up pressure | wall s |", "|---|---|---|---|---|---|"]
    for t in totals:
        L.append(f"| {t['run']} | {t['requests']} | {t['failures']} | {_fmt(t['accuracy'], 4)} | "
                 f"{_fmt(t['warmup_pressure'], 2)} | {t['wall_s']:.0f} |")
    L += ["", "![sweep](sweep.png)", ""]
    path.write_text("\n".join(L))


def plot(path: Path, combined: list[dict], slo_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode in MODES:
        cs = sorted((c for c in combined if c["mode"] == mode), key=lambda c: c["stage"])
        if not cs:
            continue
        x = [c["offered_rps"] for c in cs]
        for k, m in ((0, "rps"), (1, "p95_ms")):
            y = [c[m] for c in cs]
            err = [[c[m] - c[m + "_min"] for c in cs], [c[m + "_max"] - c[m] for c in cs]]
            ax[k].errorbar(x, y, yerr=err, marker="o", capsize=3, label=mode)
        ax[2].plot([c["rps"] for c in cs], [c["accuracy"] for c in cs], marker="o", label=mode)
    ax[0].set(xlabel="offered load (req/s)", ylabel="throughput (req/s)", title="throughput vs offered load")
    ax[1].axhline(slo_ms, color="grey", ls="--", label=f"SLO {slo_ms:g} ms")
    ax[1].set(xlabel="offered load (req/s)", ylabel="p95 latency (ms, log scale)", title="p95 latency vs offered load",
              yscale="log")
    ax[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax[1].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[2].set(xlabel="throughput (req/s)", ylabel="accuracy", title="accuracy vs throughput")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command -----------------------------------------------------------------------------------

def _default_data(a) -> tuple[str, str, str]:
    if a.data:
        return a.data, a.text_column, a.label_column
    meta_path = Path(a.bundle or os.environ.get("DIHS_BUNDLE", "bundles/default")) / "dihs.json"
    if not a.url and meta_path.is_file():
        d = json.loads(meta_path.read_text()).get("data", {})
        if d.get("spec"):
            return d["spec"], d.get("text_column", "text"), d.get("label_column", "label")
    return "election-tweets", a.text_column, a.label_column


def run_sweep(a) -> Path:
    if importlib.util.find_spec("locust") is None:
        raise _usage_error("dihs loadtest needs locust: pip install locust (or the project's dev extra)")
    cfg = config_from_args(a)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise _usage_error(f"--out {out} is a file, not a folder")
    if a.slo_ms <= 0:
        raise _usage_error(f"--slo-ms must be above 0, got {a.slo_ms:g}")
    modes = list(dict.fromkeys(a.modes))
    bundle = a.bundle or os.environ.get("DIHS_BUNDLE", "bundles/default")
    if not a.url and not (Path(bundle) / "dihs.json").is_file():
        raise _usage_error(f"no bundle at {bundle}: train one (dihs train) or pass --url of a running service")
    data = _default_data(a)
    examples = held_out(*data)  # DataError: one line
    if a.url:
        check_service(a.url.rstrip("/"), examples)  # before anything is written
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    plan = make_plan("step", list(cfg.users), cfg.stage_seconds)
    order = [(r, m) for r in range(cfg.rounds) for m in modes]
    say = (lambda *_: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.monotonic()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    service = progress = None
    rows, totals = [], []
    try:
        if a.url:
            url, service_desc = a.url.rstrip("/"), f"the running service at {a.url}"
        else:
            say(f"starting `dihs serve {bundle}` on a free port (log {raw / 'service.log'}) ...")
            service = Service(bundle, a.slo_ms, raw / "service.log")
            service.wait_ready()
            url, service_desc = service.url, f"`dihs serve {bundle}` started here (default settings: 1 replica, 1 torch thread)"
            check_service(url, examples)
        say(f"{len(order)} runs of {plan.duration:.0f} s ({', '.join(f'{m} r{r + 1}' for r, m in order)})")
        progress = Progress(len(order) * plan.duration, quiet=a.quiet)
        for i, (rnd, mode) in enumerate(order):
            name = f"{mode}-r{rnd + 1}"
            t_run = time.monotonic()
            progress.show(f"{name} warm-up")
            pressure = warm_up(url, mode, examples)
            prefix = raw / name
            cmd = locust_command(url, prefix, mode, cfg, data, a.route, a.model_name)
            t0 = time.monotonic()

            def tick(name=name, t0=t0, done=i * plan.duration):
                el = time.monotonic() - t0
                s = plan.stage_at(el) or plan.stages[-1]
                progress.show(f"{name} stage {s.index + 1}/{len(plan.stages)} ({s.users} users)", done + el)

            run_locust(cmd, raw / f"{name}.log", plan, tick)
            events = read_events(Path(f"{prefix}_events.csv"))
            for r in stage_rows(events, plan, cfg.settle_seconds, cfg.user_rate):
                rows.append({"mode": mode, "round": rnd + 1, **r})
            tot = locust_totals(read_locust_stats(Path(f"{prefix}_stats.csv")))
            totals.append({"run": name, **tot, "rejected": sum(int(e["status"]) == 503 for e in events),
                           "warmup_pressure": pressure, "wall_s": time.monotonic() - t_run})
            last = [r for r in rows if r["mode"] == mode and r["round"] == rnd + 1][-1]
            progress.show(f"{name} done: {tot['requests']} requests, {tot['failures']} failed, last stage "
                          f"{last['rps']:.1f} req/s p95 {last['p95_ms']:.0f} ms", (i + 1) * plan.duration, force=True)
    finally:
        if progress is not None:
            progress.close()
        if service is not None:
            say("stopping the service ...")
            service.stop()
    wall = time.monotonic() - t_start
    with (out / "sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    combined = combine(rows)
    check = target_check(combined, a.slo_ms)
    meta = {"command": shlex.join(["dihs", *sys.argv[1:]]), "started": started, "service": service_desc, "url": url,
            "data": data[0], "examples": len(examples), "route": a.route, "users": list(cfg.users),
            "stage_seconds": cfg.stage_seconds, "settle_seconds": cfg.settle_seconds, "user_rate": cfg.user_rate,
            "rounds": cfg.rounds, "order": [f"{m}-r{r + 1}" for r, m in order], "slo_ms": a.slo_ms, "wall_s": wall,
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), client and service on the same machine"}
    plot(out / "sweep.png", combined, a.slo_ms)
    write_summary(out / "summary.md", meta, combined, check, totals)
    (out / "runs.json").write_text(json.dumps({"meta": meta, "target": check, "runs": totals}, indent=1))
    print((out / "summary.md").read_text())
    return out
