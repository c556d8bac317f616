"""Hostile HTTP servers on loopback for Pay's tests: each one is a real TCP
listener whose answers a test scripts byte by byte (trickled heads and bodies,
compressed bodies that lie about their size, redirects, refusals).

A script is an ``async def (request, writer)``; ``Request`` holds what Teller
sent, so a test can tell the unpaid request from the paid retry and check
which headers reached which server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


Script = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    base: str
    requests: list[Request] = field(default_factory=list)
    connections: int = 0


def head(status: int, headers: list[tuple[str, str]], reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def respond(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    writer.write(head(status, [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]) + body)
    await writer.drain()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """One byte at a time: each read finishes well inside any read timeout."""
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()
        await asyncio.sleep(every_s)


async def _read_request(reader: asyncio.StreamReader) -> Request:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return Request(method, target, headers, body)


@contextlib.contextmanager
def hostile(script: Script, host: str = "127.0.0.1") -> Iterator[Server]:
    """Serve ``script`` on ``host`` (any free port) in a thread of its own."""
    loop = asyncio.new_event_loop()
    state: dict[str, object] = {}
    ready = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        srv: Server = state["server"]  # type: ignore[assignment]
        srv.connections += 1
        try:
            request = await _read_request(reader)
            srv.requests.append(request)
            await script(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # Teller hung up: that is what most of these tests expect
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def start() -> None:
        server = await asyncio.start_server(handle, host, 0)
        port = server.sockets[0].getsockname()[1]
        state["server"] = Server(f"http://{host}:{port}")
        state["listener"] = server
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("hostile server did not start")
    try:
        yield state["server"]  # type: ignore[misc]
    finally:
        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            state["listener"].close()  # type: ignore[attr-defined]
            loop.stop()

        loop.call_soon_threadsafe(stop)
        thread.join(10)


__all__ = ["Request", "Server", "head", "hostile", "respond", "trickle"]
