"""The tests' fault proxy on loopback, in front of an echo server: it forwards, delays by the
latency set, resets open connections on a cut, refuses new ones, and holds traffic while
blackholed (what it held is delivered once healed)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from meter.adapters.broker import free_port
from tests.harness.faultproxy import FaultProxy, running_proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except ConnectionError:  # the proxy reset its side: what a cut does
            pass


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with running_proxy(("127.0.0.1", server.server_address[1]), free_port()) as p:
            yield p
    finally:
        server.shutdown()
        server.server_close()


def _connect(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection((proxy.host, proxy.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _round_trip(s: socket.socket, data: bytes = b"ping") -> float:
    started = time.monotonic()
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    assert got == data
    return time.monotonic() - started


def _broken(s: socket.socket) -> bool:
    """Whether the connection fails within two round trips (a reset can show on the second)."""
    try:
        _round_trip(s)
        _round_trip(s)
    except ConnectionError:
        return True
    return False


def _refused(proxy: FaultProxy) -> bool:
    """Whether a new connection is reset: at once (the reset can beat `connect` returning on
    loopback) or within two round trips."""
    try:
        s = _connect(proxy)
    except ConnectionError:
        return True
    with s:
        return _broken(s)


def test_it_forwards_and_adds_the_latency_each_way(proxy: FaultProxy) -> None:
    """Only lower bounds: a loaded machine can make any round trip slow, never fast."""
    with _connect(proxy) as s:
        _round_trip(s)
        proxy.set_latency(150)
        assert _round_trip(s) >= 0.3  # 150 ms there, 150 ms back
        proxy.heal()
        _round_trip(s)
        assert proxy.latency_s == 0


def test_a_cut_resets_open_connections_and_refusing_resets_new_ones(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        _round_trip(s)
        assert proxy.cut() == 1
        assert _broken(s)
    proxy.refuse(True)
    assert _refused(proxy)
    proxy.refuse(False)
    with _connect(proxy) as s:
        _round_trip(s)


def test_a_blackhole_holds_traffic_until_healed(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        proxy.blackhole(True)
        s.settimeout(0.5)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(4096)
        proxy.heal()
        s.settimeout(5)
        assert s.recv(4096) == b"held"
