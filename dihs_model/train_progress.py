"""How far `dihs train`'s width training has got, for a service serving its early bundle: a small
JSON file in the early bundle's folder (`training.json`), rewritten atomically as steps finish, and
marked failed, with the error, if the training stops on one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROGRESS_FILE = "training.json"
WRITE_EVERY_S = 2.0  # at most one rewrite per this many seconds while steps finish


class TrainProgress:
    """Writes {"status": running|done|failed, "done": steps, "total": at most this many steps,
    "eta_s": seconds left at the pace so far, "error": why it failed} to `folder/PROGRESS_FILE`."""

    def __init__(self, folder: Path, total: int, clock=time.monotonic):
        self.path, self.total, self.clock = Path(folder) / PROGRESS_FILE, total, clock
        self.started, self._written_at, self.done = clock(), None, 0
        self._write("running")

    def step(self, done: int) -> None:
        """`done` of the total steps have finished (rewritten at most every WRITE_EVERY_S)."""
        self.done = done
        if self._written_at is None or self.clock() - self._written_at >= WRITE_EVERY_S:
            self._write("running")

    def finished(self) -> None:
        self._write("done")

    def failed(self, error: BaseException) -> None:
        self._write("failed", f"{type(error).__name__}: {error}")

    def _write(self, status: str, error: str | None = None) -> None:
        elapsed = self.clock() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done and status == "running" else None
        record = {
            "status": status,
            "done": self.done,
            "total": self.total,
            "eta_s": None if eta is None else round(eta),
            "error": error,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)  # a reader sees the old record or the new one, never half of one
        self._written_at = self.clock()


def read_progress(folder: Path) -> dict | None:
    """The progress record in this bundle folder, or None (none written, or unreadable)."""
    try:
        record = json.loads((Path(folder) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None


def describe(record: dict | None) -> str:
    """The record in words, for a reason, the config and the log: '120 of at most 435 steps, about
    9 min left', 'failed: ...', or '' when nothing is known."""
    if not record:
        return ""
    if record.get("status") == "failed":
        return f"failed: {record.get('error')}"
    text = f"{record.get('done', 0)} of at most {record.get('total', '?')} steps"
    eta = record.get("eta_s")
    if eta is not None:
        text += f", about {max(1, round(eta / 60))} min left"
    return text
