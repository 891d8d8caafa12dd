"""HAProxy that dies with its parent: Ray Serve's HAProxy manager starts HAProxy as a plain child
process, so a hard stop of `dihs serve` (SIGKILL, or a SIGKILL after a SIGTERM, which reaches Ray's
workers before they stop HAProxy) left HAProxy running, reparented to init and still bound to the
service's port. Ray runs the binary RAY_SERVE_HAPROXY_BINARY_PATH names; this one is a wrapper that
sets the parent-death signal (Linux prctl PR_SET_PDEATHSIG, kept across exec) to SIGKILL, then
execs the real HAProxy with the same arguments.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

# prctl(PR_SET_PDEATHSIG = 1, SIGKILL), then exec: for machines without util-linux's setpriv
_PYTHON_GUARD = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def wrapper_text(binary: str) -> str:
    setpriv = shutil.which("setpriv")
    if setpriv:
        run = f'exec {shlex.quote(setpriv)} --pdeathsig KILL -- {shlex.quote(binary)} "$@"'
    else:
        run = f'exec {shlex.quote(sys.executable)} -c {shlex.quote(_PYTHON_GUARD)} {shlex.quote(binary)} "$@"'
    return (
        "#!/bin/sh\n# written by dihs (service/haproxy_guard.py): HAProxy dies with its parent\n" + run + "\n"
    )


def guarded_haproxy(binary: str, folder: Path | None = None) -> Path:
    """An executable wrapper of `binary` (written once per user and binary; rewritten if it differs)."""
    folder = Path(tempfile.gettempdir()) if folder is None else folder
    # a digest, not hash(): str hashes differ per process, which wrote a new wrapper at every start
    digest = hashlib.sha256(binary.encode()).hexdigest()[:12]
    path = folder / f"dihs-haproxy-{os.getuid()}-{digest}.sh"
    text = wrapper_text(binary)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return path
