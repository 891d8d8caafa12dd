"""service.ports: listeners' ports come from below the kernel's ephemeral range, where no outgoing
connection can take them between the check and the bind (CI once failed on exactly that)."""

from __future__ import annotations

import random
import socket

from service import ports


def test_free_port_is_below_the_ephemeral_range_and_bindable_on_every_address():
    low, _ = ports.ephemeral_range()
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST_PORT <= port < low
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))


def test_a_port_held_by_a_listener_on_loopback_is_not_free():
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_port()))
        held.listen()
        port = held.getsockname()[1]
        assert not ports.is_free(port)
        # the same random draw that finds the held port first must move on to another
        draws = iter([port, port + 1 if port + 1 < ports.ephemeral_range()[0] else port - 1])

        class Rigged(random.Random):
            def randrange(self, *_):
                return next(draws)

        assert ports.free_port(Rigged()) != port


def test_range_file_parsing_and_fallback(tmp_path):
    f = tmp_path / "range"
    f.write_text("40000\t50000\n")
    assert ports.ephemeral_range(f) == (40000, 50000)
    f.write_text("garbage")
    assert ports.ephemeral_range(f) == (32768, 60999)
    assert ports.ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_a_range_that_starts_too_low_falls_back_on_a_kernel_chosen_port(tmp_path):
    f = tmp_path / "range"
    f.write_text("1024 65000")
    port = ports.free_port(range_file=f)
    assert 1024 <= port <= 65535 and ports.is_free(port)
