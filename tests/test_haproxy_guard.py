"""A hard-stopped `dihs serve` leaves nothing bound to its port: HAProxy runs under a wrapper that
sets its parent-death signal (service/haproxy_guard.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from service.app import haproxy_binary
from service.haproxy_guard import guarded_haproxy, wrapper_text
from tests.conftest import free_port


def _wait_for(check, limit_s: float, step_s: float = 0.2):
    """Poll until check() is truthy (a bound on how long a condition may take, not a timing assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(step_s)
    return check()


def test_the_wrapped_child_dies_with_its_parent(tmp_path):
    """A parent that starts the wrapped program and is then SIGKILLed takes the program with it
    (without the wrapper the program lives on, reparented to init)."""
    sleeper = guarded_haproxy("/bin/sleep", tmp_path)
    assert os.access(sleeper, os.X_OK) and "/bin/sleep" in sleeper.read_text()
    for wrapped, survives in ((str(sleeper), False), ("/bin/sleep", True)):
        parent = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import subprocess, time; p = subprocess.Popen([{wrapped!r}, "
                "'300']); print(p.pid, flush=True); time.sleep(300)",
            ],
            stdout=subprocess.PIPE,
        )
        child = int(parent.stdout.readline())
        # exec'd: the wrapper is gone
        assert _wait_for(lambda child=child: psutil.Process(child).name() == "sleep", 10)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone = _wait_for(
            lambda child=child: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie", 10
        )
        assert gone != survives, (wrapped, "survived" if survives else "was not killed")
        if survives:
            os.kill(child, signal.SIGKILL)


def test_the_wrapper_runs_the_real_haproxy(tmp_path):
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("no HAProxy binary here")
    out = subprocess.run(
        [str(guarded_haproxy(binary, tmp_path)), "-v"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "HAProxy version" in out.stdout
    assert wrapper_text(binary).startswith("#!/bin/sh")


def _listener(port: int):
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            return c.pid or True
    return None


def _serve(bundle, port: int) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "dihs"),
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
            "--model-name",
            "tiny",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.serve
def test_kill_9_of_dihs_serve_frees_its_port_for_the_next_start(tmp_path):
    if haproxy_binary() is None:
        pytest.skip("no HAProxy binary here")
    from dihs_model.bundle import save_bundle
    from tests.conftest import tiny_calibrated_bundle

    bundle = save_bundle(tiny_calibrated_bundle(tmp_path), tmp_path / "bundle")
    port = free_port()
    first = _serve(bundle, port)
    try:
        assert _wait_for(lambda: _ready(port), 180, 1.0), "dihs serve did not become ready"
        haproxies = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "haproxy"
            and any(str(port) in open(a).read() for a in p.info["cmdline"] if a.endswith(".cfg"))
        ]
        assert haproxies, "HAProxy serves the port"
        # a hard stop: the CLI and the Ray worker that started HAProxy, both SIGKILLed
        for p in [psutil.Process(first.pid), *(h.parent() for h in haproxies)]:
            p.kill()
        assert _wait_for(lambda: not _listener(port), 30), f"port {port} still held by {_listener(port)}"
        assert not [h for h in haproxies if h.is_running() and h.status() != "zombie"]
    finally:  # what else the first run's Ray left in its session goes too
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    second = _serve(bundle, port)
    try:
        assert _wait_for(lambda: _ready(port), 180, 1.0), "a second dihs serve on the same port did not start"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=120)


def test_the_wrapper_is_written_once_per_binary_across_processes(tmp_path):
    """Each `dihs serve` start names the same wrapper file (str hashes differ per process, so a name
    built from hash() left one more file in the temp folder at every start)."""
    code = (
        "import sys; from pathlib import Path; from service.haproxy_guard import guarded_haproxy as g; "
        "print(g('/bin/sleep', Path(sys.argv[1])))"
    )
    names = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(names) == 1 and [p.name for p in tmp_path.iterdir()] == [os.path.basename(names.pop())]
