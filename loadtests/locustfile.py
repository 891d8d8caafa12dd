"""Locust users for DIHS Serve: labelled held-out examples, the label of every answer checked.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless --csv out/run \\
        --budget adaptive --shape step --shape-users 2,4,8,12 --stage-seconds 30 ClassifyUser

Users: `ClassifyUser` (POST /v1/classify, one text) and `InferUser` (POST /v2/models/{name}/infer,
one BYTES text, the budget in `parameters`) are closed loops, each paced at --user-rate; name one
on the command line, or both run. `OpenLoopUser` is the open loop: one user that starts each
request of --arrivals FILE (JSON [[seconds, segment], ...], from loadtests/open_loop.py) in its own
greenlet at its scheduled time, whatever the latency, then waits --drain-seconds at most for the
answers and ends the run; its events' `t` is the scheduled time and `lag_ms` how late it started.

Options (each also an env var): --budget dense|static|adaptive (DIHS_LOADTEST_BUDGET; dense =
{"mode":"dense"}, static = {"mode":"fixed","max_flops_ratio":0.5}, adaptive = {"mode":"auto"}),
--data TASK_OR_FILE (DIHS_LOADTEST_DATA; its held-out split) with --text-column/--label-column,
--model-name, --user-rate (requests per second per user), --shape steady|step|spike with
--shape-users and --stage-seconds (loadtests/shapes.py; the shape ends the run, so no --run-time),
--events-csv (one row per request; default PREFIX_events.csv beside --csv). DIHS_API_KEY, when
set, is sent as `Authorization: Bearer` (a service started with an API key).

What lands in Locust's stats (and `--csv`), beside each route's own row:
  CHECK  "label [BUDGET]"   one entry per answered text; a wrong label is a failure, so this
                            row's failure ratio is 1 - accuracy (failures.csv: expected vs got)
  FLOPS  "flops% [BUDGET]"  one entry per answered text whose "response time" is the percentage
                            of the full model's FLOPs computed (100 = dense): its average is the mean
                            FLOPs ratio x 100, its percentiles the distribution
HTTP failures are real errors only: a non-2xx answer (503 is the service's documented
back-pressure) or a connection error. These pseudo entries also count in Locust's "Aggregated"
row, so read throughput from the route's own row.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
from pathlib import Path

import gevent.pool
from locust import FastHttpUser, LoadTestShape, events, task
from locust.exception import StopUser

from loadtests.common import BUDGETS, held_out
from loadtests.shapes import DEFAULT_USERS, make_plan, parse_users
from loadtests.stats import EVENT_FIELDS


class WrongLabel(Exception):
    pass


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="adaptive",
        env_var="DIHS_LOADTEST_BUDGET",
        help="dense, static (fixed, 50%% of the FLOPs) or adaptive (auto)",
    )
    parser.add_argument(
        "--data",
        default="election-tweets",
        env_var="DIHS_LOADTEST_DATA",
        help="built-in task or a .csv/.tsv/.jsonl file: its held-out split is sent",
    )
    parser.add_argument("--text-column", default="text", env_var="DIHS_LOADTEST_TEXT_COLUMN")
    parser.add_argument("--label-column", default="label", env_var="DIHS_LOADTEST_LABEL_COLUMN")
    parser.add_argument(
        "--model-name",
        default="dihs",
        env_var="DIHS_LOADTEST_MODEL_NAME",
        help="model name in /v2/models/{name}/infer",
    )
    parser.add_argument(
        "--user-rate",
        type=float,
        default=2.0,
        env_var="DIHS_LOADTEST_USER_RATE",
        help="requests per second each user aims at (0: no wait between requests)",
    )
    parser.add_argument(
        "--shape", choices=sorted(DEFAULT_USERS), default="step", env_var="DIHS_LOADTEST_SHAPE"
    )
    parser.add_argument(
        "--shape-users",
        default="",
        env_var="DIHS_LOADTEST_SHAPE_USERS",
        help="steady: N; step: N1,N2,...; spike: BASE,PEAK (default per shape)",
    )
    parser.add_argument("--stage-seconds", type=float, default=30.0, env_var="DIHS_LOADTEST_STAGE_SECONDS")
    parser.add_argument(
        "--arrivals",
        default="",
        env_var="DIHS_LOADTEST_ARRIVALS",
        help="OpenLoopUser: JSON list of [scheduled seconds, segment] (replaces the shape)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        env_var="DIHS_LOADTEST_DRAIN_SECONDS",
        help="OpenLoopUser: how long answers are awaited after the last arrival",
    )
    parser.add_argument(
        "--events-csv",
        default="",
        env_var="DIHS_LOADTEST_EVENTS_CSV",
        help="one row per request (default: PREFIX_events.csv when --csv PREFIX is given)",
    )


class _State:
    """Per-process state, built once at init from the parsed options."""

    env = None
    plan = None
    examples: list[tuple[str, str]] = []
    counter = itertools.count()
    started = time.perf_counter()
    writer = None
    file = None
    arrivals: list | None = None  # the open loop's schedule; its run ends once `open_done`
    open_done = False


@events.init.add_listener
def _init(environment, **_):
    o = environment.parsed_options
    if o is None:  # imported by a tool, not run by Locust
        return
    _State.env = environment
    try:
        _State.plan = make_plan(
            o.shape, parse_users(o.shape_users) if o.shape_users else None, o.stage_seconds
        )
        _State.examples = held_out(o.data, o.text_column, o.label_column)
        if o.arrivals:
            _State.arrivals = json.loads(Path(o.arrivals).read_text())
    except OSError as e:
        raise SystemExit(f"locustfile: error: --arrivals: {e}") from None
    except ValueError as e:  # DataError is a ValueError: one line, not a traceback
        raise SystemExit(f"locustfile: error: {e}") from None


@events.test_start.add_listener
def _start(environment, **_):
    o = environment.parsed_options
    _State.started = time.perf_counter()
    path = o.events_csv or (f"{o.csv_prefix}_events.csv" if getattr(o, "csv_prefix", None) else "")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _State.file = open(path, "w", newline="", buffering=1)
        _State.writer = csv.DictWriter(_State.file, EVENT_FIELDS)
        _State.writer.writeheader()


@events.quitting.add_listener
def _quit(environment, **_):
    if _State.file:
        _State.file.close()
        _State.file = _State.writer = None


@events.request.add_listener
def _record(response_time=0.0, response=None, context=None, exception=None, **_):
    """One events-CSV row per HTTP request (the CHECK/FLOPS pseudo entries carry no `route`)."""
    if _State.writer is None or not context or "route" not in context:
        return
    env = _State.env
    shape = env.shape_class
    t = shape.get_run_time() if shape is not None else time.perf_counter() - _State.started
    t = context.get("sched_t", t)
    _State.writer.writerow(
        {
            "segment": context.get("segment", ""),
            "lag_ms": context.get("lag_ms", ""),
            "heads_ratio": context.get("heads_ratio", ""),
            "retry_after": context.get("retry_after", ""),
            "t": round(t, 3),
            "users": env.runner.user_count if env.runner else "",
            "route": context["route"],
            "budget": context["budget"],
            "status": getattr(response, "status_code", 0) or 0,
            "ok": int(exception is None),
            "latency_ms": round(response_time, 2),
            "correct": context.get("correct", ""),
            "flops_ratio": context.get("flops_ratio", ""),
            "pressure": context.get("pressure", ""),
            "example": context["example"],
        }
    )


class _LabelledUser(FastHttpUser):
    abstract = True
    connection_timeout = 10.0
    network_timeout = 60.0
    route = ""

    def on_start(self):
        if not _State.examples:
            raise StopUser()
        self.opts = self.environment.parsed_options
        self.budget = BUDGETS[self.opts.budget]
        key = os.environ.get("DIHS_API_KEY")  # a service started with an API key wants it on every request
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._next = time.perf_counter()

    def wait_time(self) -> float:
        """Aim at --user-rate requests per second; a user whose answers come late just goes on at once."""
        rate = self.opts.user_rate
        if rate <= 0:
            return 0.0
        self._next = max(self._next + 1.0 / rate, time.perf_counter())
        return self._next - time.perf_counter()

    def body(self, text: str) -> dict:
        raise NotImplementedError

    def parse(self, data: dict) -> tuple[str, float, float | None]:
        """(label, FLOPs ratio, load pressure or None, heads ratio or None) of the one answered text."""
        raise NotImplementedError

    def send(self, path: str, name: str, context: dict | None = None):
        k = next(_State.counter)
        text, label = _State.examples[k % len(_State.examples)]
        context = {
            **(context or {}),
            "route": self.route,
            "budget": self.opts.budget,
            "example": k % len(_State.examples),
        }
        with self.client.post(
            path,
            json=self.body(text),
            name=f"{name} [{self.opts.budget}]",
            context=context,
            headers=self.headers,
            catch_response=True,
        ) as resp:
            if resp.status_code == 503:
                resp.request_meta["context"]["retry_after"] = resp.headers.get("Retry-After") or ""
            if resp.status_code != 200:
                kind = "back-pressure (documented)" if resp.status_code == 503 else "error"
                resp.failure(f"HTTP {resp.status_code} {kind}: {(resp.text or '')[:200]}")
                return
            try:
                got, ratio, pressure, heads = self.parse(resp.json())
            except (ValueError, KeyError, IndexError, TypeError) as e:
                resp.failure(f"malformed answer: {e!r}")
                return
            ctx = resp.request_meta["context"]
            ctx["correct"], ctx["flops_ratio"] = int(got == label), ratio
            ctx["pressure"] = "" if pressure is None else pressure
            ctx["heads_ratio"] = "" if heads is None else heads
            resp.success()
        fire = self.environment.events.request.fire
        fire(
            request_type="CHECK",
            name=f"label [{self.opts.budget}]",
            response_time=0,
            response_length=0,
            context={},
            exception=None if got == label else WrongLabel(f"expected {label}, got {got}"),
        )
        fire(
            request_type="FLOPS",
            name=f"flops% [{self.opts.budget}]",
            response_time=100.0 * ratio,
            response_length=0,
            context={},
            exception=None,
        )


class _V1:
    """POST /v1/classify with one text and the run's budget: the body and the answer (no task, so a user
    class can take these without Locust also running another class's task)."""

    route = "v1"

    def body(self, text):
        return {"text": text, "budget": self.budget}

    def parse(self, data):
        r = data["results"][0]
        return r["label"], float(r["flops_ratio"]), float(r["pressure"]), float(r["heads"]["ratio"])


class ClassifyUser(_V1, _LabelledUser):
    """Closed loop over POST /v1/classify."""

    @task
    def classify(self):
        self.send("/v1/classify", "/v1/classify")


class InferUser(_LabelledUser):
    """POST /v2/models/{name}/infer (Open Inference Protocol v2), the budget in `parameters`."""

    route = "v2"

    def body(self, text):
        return {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
            "parameters": self.budget,
        }

    def parse(self, data):
        out = {o["name"]: o["data"] for o in data["outputs"]}
        heads = float(out["heads_ratio"][0]) if "heads_ratio" in out else None
        return out["label"][0], float(out["flops_ratio"][0]), None, heads  # v2 answers carry no pressure

    @task
    def infer(self):
        self.send(f"/v2/models/{self.opts.model_name}/infer", "/v2/models/{name}/infer")


class OpenLoopUser(_V1, _LabelledUser):
    """The open loop over POST /v1/classify: each arrival of --arrivals in its own greenlet at its time.
    Not a ClassifyUser: Locust gathers a user's tasks from its base classes too, and picked ClassifyUser's
    closed-loop task now and then before the schedule (an unscheduled request that shifted the run's
    example sequence by one)."""

    concurrency = 1024  # connections the one user may hold open at once (FastHttpSession's pool)

    def wait_time(self) -> float:
        return 0.0

    @task
    def classify(self):
        if _State.open_done or not _State.arrivals:
            _State.open_done = True
            raise StopUser()
        group, t0 = gevent.pool.Group(), time.perf_counter()
        for at, segment in _State.arrivals:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            lag = 1000 * (time.perf_counter() - t0 - at)
            group.spawn(
                self.send,
                "/v1/classify",
                "/v1/classify",
                {"sched_t": at, "segment": segment, "lag_ms": round(lag, 2)},
            )
        group.join(timeout=self.opts.drain_seconds)
        group.kill(block=False)  # past the drain: no answer (counted as such: no event is written)
        _State.open_done = True
        raise StopUser()


class SelectedShape(LoadTestShape):
    """The plan named by --shape (steady, step or spike; see loadtests/shapes.py); with --arrivals,
    the one open-loop user until its schedule is done."""

    def tick(self):
        if _State.arrivals is not None:
            return None if _State.open_done else (1, 1.0)
        return _State.plan.tick(self.get_run_time())
