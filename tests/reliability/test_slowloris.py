"""Slowloris promise: connections that trickle bytes without ever completing a frame are closed by
the idle timeout (it counts complete frames, not bytes), while a normal client keeps working."""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from tests.support.backends import PLATFORM_BACKENDS
from tests.support.hostile import WAIT_S, closing_all, connect, round_trip, serving, wait_for

SLOW_CLIENTS = 1000
IDLE_TIMEOUT_S = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", PLATFORM_BACKENDS)
def test_slowloris_connections_are_closed_by_idle_timeout_while_a_normal_client_works(backend):
    with serving(
        backend,
        session={"idle_timeout_s": IDLE_TIMEOUT_S},
        io={"max_connections": SLOW_CLIENTS + 16},
        # all from 127.0.0.1: no per-address limit (the test is about the idle timeout)
        server={"backlog": SLOW_CLIENTS + 16, "max_connections_per_address": 0},
    ) as st, closing_all([]) as socks:
        good = connect(st.address)
        socks.append(good)
        round_trip(good, 0)
        sel = selectors.DefaultSelector()
        for _ in range(SLOW_CLIENTS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            s.connect_ex(st.address)
            sel.register(s, selectors.EVENT_READ)
        wait_for(lambda: st.sessions() == SLOW_CLIENTS + 1, what="all slow clients accepted")
        # The first of 100 announced payload bytes, then one more per second: never a whole frame.
        trickle = iter(b"\x00\x00\x00\x64" + b"x" * 100)
        open_socks = {s for s in socks if s is not good}
        round_trips = 0
        next_byte = 0.0
        deadline = time.monotonic() + IDLE_TIMEOUT_S + WAIT_S
        while open_socks:
            assert time.monotonic() < deadline, f"{len(open_socks)} slow clients still open"
            now = time.monotonic()
            if now >= next_byte:
                next_byte = now + 1.0
                byte = bytes([next(trickle)])
                for s in list(open_socks):
                    try:
                        s.send(byte)
                    except OSError:  # reset or broken pipe: the server closed it
                        sel.unregister(s)
                        open_socks.discard(s)
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    closed = s.recv(4096) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    sel.unregister(s)
                    open_socks.discard(s)
            round_trip(good, round_trips)  # a normal client keeps being served throughout
            round_trips += 1
        sel.close()
        wait_for(lambda: st.sessions() == 1, what="only the normal session left")
        reasons = [r for _, r in st.reasons]
        assert reasons.count("idle timeout") == SLOW_CLIENTS, reasons[:5]
        assert len(reasons) == SLOW_CLIENTS
        round_trip(good, "still here")
        assert round_trips > 0
