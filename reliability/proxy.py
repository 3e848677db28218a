"""A TCP proxy between one worker and its backend, which can cut the worker off.

While cut, nothing passes in either direction and new connections are accepted but never
reach the server: to the worker it looks like a network partition (no error, no answer).
When the cut ends, every connection that lived through it is reset, as a partition that
outlived the TCP timeouts ends, and the worker must reconnect on its own.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class CutProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

    def rewrite(self, url: str) -> str:
        """``url`` with its server's address replaced by the proxy's."""
        host, port = self.upstream
        address = f"{host}:{port}"
        if address not in url:
            raise ValueError(f"{url!r} does not name {address}")
        return url.replace(address, f"127.0.0.1:{self.port}", 1)

    def cut(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        """End the cut: reset every connection that lived through it, then let traffic pass."""
        with self._lock:
            doomed, self._sockets = self._sockets, []
        for s in doomed:
            _reset(s)
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.restore()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            if not self._flowing.is_set():
                continue  # held without a server until the cut ends (then reset)
            try:
                server = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            self._track(server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self._flowing.wait()  # a cut holds what was read; restore() resets the pair
                if src.fileno() < 0 or dst.fileno() < 0:
                    return
                dst.sendall(data)
        _reset(dst)


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a connection a partition killed."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def proxied(upstream: tuple[str, int]) -> Iterator[CutProxy]:
    proxy = CutProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
