"""`dihs loadtest`: how much throughput adaptive head budgets win, and what accuracy they cost, as load rises.

For each mode (dense, static = 50% of the FLOPs, adaptive = DIHS auto) the same step shape runs with
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
from .report import plot, target_check, write_summary
from .shapes import Plan, make_plan, parse_users
from .stats import ROW_FIELDS, combine, locust_totals, read_events, read_locust_stats, stage_rows, versus_dense

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
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
    from dihs_cli.common import UsageError

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
                "from dihs_cli.cli import main; sys.exit(main(sys.argv[1:]))")
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
            "--stop-timeout", "30",  # at the end, answers in flight are awaited, not cut off
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


def write_report(out: Path, rows: list[dict], meta: dict, totals: list[dict]) -> None:
    """sweep.csv, sweep.png, summary.md and runs.json from the per-stage rows of every run."""
    rows = versus_dense(rows)
    with (out / "sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    combined = combine(rows)
    check = target_check(combined, meta["slo_ms"])
    plot(out / "sweep.png", combined, meta["slo_ms"])
    write_summary(out / "summary.md", meta, combined, check, totals)
    (out / "runs.json").write_text(json.dumps({"meta": meta, "target": check, "runs": totals}, indent=1))


def rebuild_report(out: Path) -> None:
    """The report again from DIR/runs.json and DIR/raw/*_events.csv, running nothing (after a change of report)."""
    try:
        runs = json.loads((out / "runs.json").read_text())
        meta, totals = runs["meta"], runs["runs"]
        plan = make_plan("step", meta["users"], meta["stage_seconds"])
        rows = []
        for name in meta["order"]:
            mode, rnd = name.rsplit("-r", 1)
            events = read_events(out / "raw" / f"{name}_events.csv")
            rows += [{"mode": mode, "round": int(rnd), **r}
                     for r in stage_rows(events, plan, meta["settle_seconds"], meta["user_rate"])]
    except (OSError, ValueError, KeyError) as e:
        raise _usage_error(f"--report-only needs a finished sweep in {out}: {e}") from None
    write_report(out, rows, meta, totals)


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
    t_start, loadavg_start = time.monotonic(), os.getloadavg()[0]
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
    meta = {"command": shlex.join(["dihs", *sys.argv[1:]]), "started": started, "service": service_desc, "url": url,
            "data": data[0], "examples": len(examples), "route": a.route, "users": list(cfg.users),
            "stage_seconds": cfg.stage_seconds, "settle_seconds": cfg.settle_seconds, "user_rate": cfg.user_rate,
            "rounds": cfg.rounds, "order": [f"{m}-r{r + 1}" for r, m in order], "slo_ms": a.slo_ms,
            "wall_s": time.monotonic() - t_start, "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0],
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), client and service on the same machine"}
    write_report(out, rows, meta, totals)
    print((out / "summary.md").read_text())
    return out
