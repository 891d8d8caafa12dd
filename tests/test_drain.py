"""Graceful drain of `dihs serve` (a real process, Ray and Serve in it): SIGTERM with 40 sixteen-text
requests in flight answers every accepted one, refuses the rest with 503 and Retry-After, drops
none, and the process exits within the drain timeout.

The replica's batches wait up to 3 s to fill 256 texts (env DIHS_BATCH_WAIT_MS, --max-batch-size):
the last of the 640 texts are still waiting in its batch queue when the signal arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]
N, TEXTS, DRAIN_TIMEOUT_S = 40, 16, 30


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`dihs serve` of a tiny bundle in its own process; yields (process, base URL, log path)."""
    from dihs_model.bundle import save_bundle
    from service.app import SLOW_MACHINE_ENV
    from tests.conftest import tiny_calibrated_bundle

    tmp = tmp_path_factory.mktemp("drain")
    bundle = save_bundle(tiny_calibrated_bundle(tmp), tmp / "bundle")
    port = free_port()
    env = {
        **os.environ,
        **SLOW_MACHINE_ENV,
        "RAY_AUTH_MODE": "disabled",
        "DIHS_BATCH_WAIT_MS": "3000",
        "DIHS_MAX_ONGOING_REQUESTS": "640",
        "DIHS_MAX_QUEUED_REQUESTS": "640",
        "DIHS_METRICS_PORT": str(free_port()),
    }
    log_path = tmp / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dihs_cli",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--model-name",
            "tiny",
            "--max-batch-size",
            "256",
            "--drain-timeout-s",
            str(DRAIN_TIMEOUT_S),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dihs serve exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dihs serve not ready in 240 s: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield proc, base, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def _traffic(proc, base: str) -> dict:
    texts = [f"good fun movie {i}" if i % 2 else f"bad dull plot {i}" for i in range(TEXTS)]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=N + 10)) as client:

        async def one(i: int):
            try:
                r = await client.post(f"{base}/v1/classify", json={"texts": texts})
                return r, time.monotonic()
            except httpx.HTTPError as e:  # a dropped connection, or a hang past the client's timeout
                return e, time.monotonic()

        tasks = [asyncio.create_task(one(i)) for i in range(N)]
        await asyncio.sleep(1.5)  # every request sent; the last batch waits in the replica's queue
        t_sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.7)  # the drain has begun: new requests and readiness are refused
        late = await client.post(f"{base}/v1/classify", json={"text": "good"})
        ready = await client.get(f"{base}/v2/health/ready")
        return {"results": await asyncio.gather(*tasks), "t_sigterm": t_sigterm, "late": late, "ready": ready}


def test_sigterm_answers_every_accepted_request_and_drops_none(served):
    proc, base, log_path = served
    out = asyncio.run(_traffic(proc, base))
    t0 = out["t_sigterm"]
    try:
        rc = proc.wait(timeout=DRAIN_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"dihs serve still running {DRAIN_TIMEOUT_S + 60} s after SIGTERM: {log_path.read_text()[-3000:]}"
        )
    exited_after = time.monotonic() - t0
    answered = [(r, t) for r, t in out["results"] if isinstance(r, httpx.Response) and r.status_code == 200]
    refused = [(r, t) for r, t in out["results"] if isinstance(r, httpx.Response) and r.status_code == 503]
    dropped = [
        r for r, _ in out["results"] if not isinstance(r, httpx.Response) or r.status_code not in (200, 503)
    ]
    after = [t for _, t in answered if t > t0]
    print(
        f"\n{N} requests x {TEXTS} texts, SIGTERM: {len(answered)} answered ({len(after)} after the signal), "
        f"{len(refused)} refused, {len(dropped)} dropped; exit {rc} {exited_after:.1f} s after the signal"
    )
    print(log_path.read_text()[-600:])
    assert not dropped, [repr(r) for r in dropped]
    assert len(answered) + len(refused) == N
    assert after, "no request was still in flight at the signal: the test did not test the drain"
    for r, _ in answered:
        assert len(r.json()["results"]) == TEXTS
    for r, _ in refused + [(out["late"], 0)]:
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.text)
        assert r.json()["error"]["type"] == "draining", r.text
    assert out["ready"].status_code == 503, out["ready"].text
    assert rc == 0, log_path.read_text()[-3000:]
    assert exited_after < DRAIN_TIMEOUT_S + 30  # drain, then Serve's and Ray's own shutdown
