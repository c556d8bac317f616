"""One worker per port.

A worker's acceptors share its port through SO_REUSEPORT, and the kernel would
just as gladly let a second process join them: a stale worker, or another
deployment's, would then answer part of the calls (UNAUTHENTICATED with its
own tokens, UNIMPLEMENTED without a service). So before binding, a worker
claims the port: it takes a lock named for the port that the kernel drops when
the process ends (an abstract Unix socket: per network namespace, as ports
are), and checks with a plain bind that no other program listens there.
"""

from __future__ import annotations

import errno
import socket
import sys

from teller.errors import ConfigError


def split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {address[:80]!r} must be host:port")
    return host.strip("[]"), int(port)


class PortClaim:
    """Held while the worker serves; ``release`` (or process exit) frees it."""

    def __init__(self, address: str) -> None:
        host, port = split(address)
        self.address = address
        self._lock: socket.socket | None = None
        if port == 0:
            return  # the kernel picks a free port: nobody else is on it
        if sys.platform.startswith("linux"):
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0teller-port-{port}".encode())
            except OSError as exc:
                lock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"listen {address}: port in use: another Teller worker on this host "
                                      f"serves port {port}") from None
                raise
            self._lock = lock
        try:
            _probe(address, host, port)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _probe(address: str, host: str, port: int) -> None:
    """Bind (not listen) where the worker will, without SO_REUSEPORT: that fails
    while anything listens on the port, whatever its options."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"listen {address}: cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue  # e.g. IPv6 off on this host: gRPC cannot listen there either
            raise
        with probe:
            # Connections of a previous worker still in TIME_WAIT must not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"listen {address}: port in use: another process listens on port "
                                      f"{port}") from None
                raise ConfigError(f"listen {address}: cannot bind: {exc.strerror}") from None
