"""An ASGI app served on a loopback port, in a thread, for as long as a block runs:
the paid APIs of the tests and of the demo."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from testbed.procs import free_port


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    port = free_port()
    # On leaving, a request still in its handler (a server a test made slow or hung) is
    # given a second, then cancelled, rather than holding the test up until it ends.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("resource server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
