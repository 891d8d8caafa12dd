"""Load shapes as pure plans: a list of stages, each a user count held for some seconds.

No Locust import here (importing locust monkey-patches the whole process with gevent): the
locustfile wraps a plan in a `LoadTestShape`, the sweep reads the same plan to know each stage's
time window, and the tests call `tick()` directly.

    steady  one stage: USERS for SECONDS
    step    USERS_1, USERS_2, ... each held for SECONDS (a ramp up past saturation)
    spike   BASE for SECONDS, PEAK for SECONDS (all spawned at once), BASE again for SECONDS
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_USERS = {"steady": (8,), "step": (2, 4, 8, 12, 16, 20, 24), "spike": (4, 32)}


@dataclass(frozen=True)
class Stage:
    index: int
    users: int
    start: float  # seconds since the shape started
    end: float


@dataclass(frozen=True)
class Plan:
    name: str
    stages: tuple[Stage, ...]

    @property
    def duration(self) -> float:
        return self.stages[-1].end

    def stage_at(self, run_time: float) -> Stage | None:
        for s in self.stages:
            if run_time < s.end:
                return s
        return None

    def tick(self, run_time: float) -> tuple[int, float] | None:
        """(users, spawn rate) at `run_time`, None once the plan is over (Locust then stops).

        Every stage change spawns or stops all its users within one second: a step, not a ramp.
        """
        s = self.stage_at(run_time)
        if s is None:
            return None
        prev = self.stages[s.index - 1].users if s.index else 0
        return s.users, float(max(1, abs(s.users - prev)))


def _stages(users: list[int], seconds: list[float]) -> tuple[Stage, ...]:
    out, t = [], 0.0
    for i, (u, d) in enumerate(zip(users, seconds)):
        out.append(Stage(i, u, t, t + d))
        t += d
    return tuple(out)


def make_plan(
    name: str, users: list[int] | tuple[int, ...] | None = None, stage_seconds: float = 30.0
) -> Plan:
    """A named plan; raises ValueError with a one-line message on bad parameters."""
    if name not in DEFAULT_USERS:
        raise ValueError(f"unknown load shape {name!r}; choose from {', '.join(DEFAULT_USERS)}")
    users = list(DEFAULT_USERS[name] if not users else users)
    if any(u < 1 for u in users):
        raise ValueError(f"user counts must be 1 or more, got {users}")
    if not stage_seconds > 0:
        raise ValueError(f"stage seconds must be above 0, got {stage_seconds:g}")
    if name == "steady":
        if len(users) != 1:
            raise ValueError(f"the steady shape takes one user count, got {users}")
        return Plan(name, _stages(users, [stage_seconds]))
    if name == "step":
        return Plan(name, _stages(users, [stage_seconds] * len(users)))
    if len(users) != 2 or users[1] <= users[0]:
        raise ValueError(f"the spike shape takes BASE,PEAK with PEAK above BASE, got {users}")
    base, peak = users
    return Plan(name, _stages([base, peak, base], [stage_seconds] * 3))


def parse_users(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8]; ValueError with a one-line message otherwise."""
    try:
        users = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"user counts must be comma-separated whole numbers, got {text!r}") from None
    if not users:
        raise ValueError("no user counts given")
    return users
