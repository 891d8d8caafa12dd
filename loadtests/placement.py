"""Where the sweep's processes run: the model replica on a core of its own, everything else on the others.

Linux only (sched_setaffinity); elsewhere, or on one core, nothing is pinned and the summary says so.
Every thread of a process is pinned (/proc/PID/task), and threads started later inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPLICA_MARK = "ServeReplica"  # Ray's process title of a Serve replica: ray::ServeReplica:APP:DEPLOYMENT


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pin(pid: int, cpus: set[int]) -> bool:
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").glob("[0-9]*")] or [pid]
    except OSError:  # the process ended between being listed and being pinned
        return False
    done = False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            done = True
        except OSError:  # gone, or not ours
            pass
    return done


_ALLOWED: list[int] = []  # this process's cores before pin_client narrowed them


def split_cores() -> tuple[set[int], set[int]] | None:
    """(replica cores, client cores) from this process's allowed cores: the last for the replica."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    if not _ALLOWED:
        _ALLOWED.extend(sorted(os.sched_getaffinity(0)))
    if len(_ALLOWED) < 2:
        return None
    return {_ALLOWED[-1]}, set(_ALLOWED[:-1])


def pin_client() -> str:
    """This process (and so the Locust processes it starts) onto the client cores."""
    split = split_cores()
    if split is None:
        return "not pinned (fewer than 2 cores or no sched_setaffinity)"
    os.sched_setaffinity(0, split[1])
    return f"load generator on cores {sorted(split[1])}"


def pin_server(pid: int) -> str:
    """A one-process server (the naive peer) onto the replica core."""
    split = split_cores()
    if split is None or not _pin(pid, split[0]):
        return "not pinned"
    return f"on core {sorted(split[0])}"


class on_replica_core:
    """Run this thread on the replica core for a while (the model-only runs of the path bench)."""

    def __enter__(self):
        split = split_cores()
        self._before = os.sched_getaffinity(0) if split else None
        if split:
            os.sched_setaffinity(0, split[0])

    def __exit__(self, *exc):
        if self._before is not None:
            os.sched_setaffinity(0, self._before)


def replica_pids(pids: list[int]) -> list[int]:
    """The Serve replica processes among `pids` (by their process title)."""
    return [p for p in pids if REPLICA_MARK in _cmdline(p)]


def pin_service(pids: list[int]) -> str:
    """The service's replica processes onto the replica core, its other processes (HAProxy or Ray's
    proxy, Serve's controller, Ray's own) onto the client cores; a sentence for the summary."""
    split = split_cores()
    if split is None:
        return "not pinned (fewer than 2 cores or no sched_setaffinity)"
    replica, client = split
    replicas = replica_pids(pids)
    if not replicas:
        return "not pinned: no Serve replica process was found"
    for p in pids:
        _pin(p, replica if p in replicas else client)
    return (
        f"model replica ({len(replicas)} process) alone on core {sorted(replica)}; the HTTP front (HAProxy "
        "or Ray's proxy), Serve's controller and the rest of the service "
        f"({len(pids) - len(replicas)} processes) with the load generator on cores {sorted(client)}"
    )
