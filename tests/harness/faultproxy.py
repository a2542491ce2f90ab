"""An asyncio TCP proxy that injects network faults between meter's processes and a broker.

Toxiproxy is not packaged in Debian and the kernel here has no netem, so the tests run their own
proxy: it listens on one port and forwards every connection to `upstream`. The broker advertises
the proxy's port on a second listener (`meter.adapters.broker_cluster.ProxiedListener`), so every
connection a client opens after bootstrapping goes through the proxy too. Faults, switched from
any thread while the proxy runs in its own:

- `set_latency(ms)`: each chunk is held that long in each direction (queued with a timestamp, so
  the delay does not serialise traffic);
- `cut()`: every open connection is reset (RST, via `SO_LINGER` 0), mid-request or not;
- `refuse(True)`: new connections are reset at once;
- `blackhole(True)`: connections stay open but nothing is forwarded either way (a partition:
  requests time out, sessions expire); new connections are accepted and hang the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Forwards `listen_port` to `upstream` (host, port), with faults (see the module doc)."""

    def __init__(self, upstream: tuple[str, int], listen_port: int, host: str = "127.0.0.1"):
        self.upstream = upstream
        self.host = host
        self.port = listen_port
        self.latency_s = 0.0
        self.refusing = False
        self.blackholed = False
        self.connections = 0
        self.cuts = 0
        self._pipes: set[_Pipe] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._flowing: asyncio.Event | None = None
        """Set unless blackholed (an asyncio event of the proxy's own loop)."""

    # -- controls (any thread) -----------------------------------------------------------------
    def set_latency(self, ms: float) -> None:
        self.latency_s = ms / 1000

    def refuse(self, on: bool) -> None:
        self.refusing = on

    def blackhole(self, on: bool) -> None:
        self.blackholed = on
        loop, flowing = self._loop, self._flowing
        if loop is not None and flowing is not None:
            loop.call_soon_threadsafe(flowing.clear if on else flowing.set)

    def cut(self) -> int:
        """Reset every open connection; returns how many."""
        loop = self._loop
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._cut_all(), loop).result(timeout=10)

    def heal(self) -> None:
        """No fault: no latency, connections accepted and forwarded."""
        self.set_latency(0)
        self.refuse(False)
        self.blackhole(False)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._flowing = asyncio.Event()
        if not self.blackholed:
            self._flowing.set()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        )
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._cut_all())
                # Let every pump and sender finish its cancellation before the loop goes.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    # -- forwarding ----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, pipe)),
            asyncio.ensure_future(self._pump(up_reader, writer, pipe)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, pipe: _Pipe
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, sink))
        try:
            while True:
                data = await source.read(CHUNK)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.latency_s, data))
            await queue.join()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            self._close(pipe)

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            try:
                if self._flowing is not None:
                    await self._flowing.wait()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()
            except OSError:
                return
            finally:
                queue.task_done()

    def _close(self, pipe: _Pipe) -> None:
        if pipe in self._pipes:
            self._pipes.discard(pipe)
            for w in (pipe.client, pipe.server):
                with contextlib.suppress(Exception):
                    w.close()

    async def _cut_all(self) -> int:
        pipes = list(self._pipes)
        for pipe in pipes:
            self._pipes.discard(pipe)
            for task in pipe.tasks:
                task.cancel()
            _reset(pipe.client)
            _reset(pipe.server)
        self.cuts += len(pipes)
        return len(pipes)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset', as on a network cut."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.close()


@contextlib.contextmanager
def running_proxy(upstream: tuple[str, int], listen_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, listen_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


__all__ = ["FaultProxy", "running_proxy"]
