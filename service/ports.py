"""Free TCP ports for the listeners a local service starts (HTTP, Ray metrics, HAProxy stats/metrics).

A port found by binding port 0 comes from the kernel's ephemeral range, the same range it draws the
local ports of outgoing connections from. Between the check and the listener's bind, seconds later
while Ray starts dozens of processes and connections, one of those may take it: CI once failed on
HAProxy's "cannot bind socket (Address already in use)" for such a port. Ports below that range are
never handed to outgoing connections, so one free there stays free unless a listener takes it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 20000  # above the well-known and most registered service ports
ATTEMPTS = 200


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default where unreadable)."""
    try:
        low, high = (int(x) for x in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def is_free(port: int) -> bool:
    """Whether a listener could bind `port` on every address now (HAProxy binds `*:port`)."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(rng: random.Random | None = None, range_file: Path = EPHEMERAL_RANGE_FILE) -> int:
    """A port free on every address, below the ephemeral range; a kernel-chosen one where that range
    starts too low to leave any (a machine configured so gets the old race, not a failure)."""
    rng = rng or random.SystemRandom()
    low, _ = ephemeral_range(range_file)
    if low > LOWEST_PORT:
        for _ in range(ATTEMPTS):
            port = rng.randrange(LOWEST_PORT, low)
            if is_free(port):
                return port
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]
