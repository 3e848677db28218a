"""A TCP proxy that adds a set delay to each direction (this kernel has no ``netem``).

    python -m benchmarks.netproxy --delay-ms 2 10.231.0.1:16379=127.0.0.1:6379 ...
    python -m benchmarks.netproxy ping HOST:PORT [COUNT]   # median Redis PING round trip

Each chunk read is forwarded ``delay`` after it was read, in order: per direction a queue of
(due time, bytes) and one sender thread that sleeps until each is due. A chunk waits its own delay,
not the sum of those before it, so throughput is not capped by the delay (as on a real link).
Prints ``ready`` once every listener is up. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import statistics
import sys
import threading
import time

CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Forward src to dst, each chunk ``delay`` after it was read: this thread reads, a
    sender thread waits out each chunk's due time. Threads and time.sleep rather than
    asyncio: the event loop's epoll waits round up to whole milliseconds, too coarse for a
    0.5 ms delay."""
    chunks: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()

    def send() -> None:
        with contextlib.suppress(OSError):
            while (item := chunks.get()) is not None:
                due, data = item
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with contextlib.suppress(OSError):
        while data := src.recv(CHUNK):
            chunks.put((time.perf_counter() + delay, data))
    chunks.put(None)
    sender.join()


def _serve(client: socket.socket, target: tuple[str, int], delay: float) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
    back.start()
    _pump(client, upstream, delay)
    back.join()
    client.close()
    upstream.close()


def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delay: float) -> None:
    listeners = []
    for listen, target in routes:
        sock = socket.create_server(listen, reuse_port=False)
        listeners.append((sock, target))
    print("ready", flush=True)

    def accept(sock: socket.socket, target: tuple[str, int]) -> None:
        while True:
            client, _ = sock.accept()
            threading.Thread(target=_serve, args=(client, target, delay), daemon=True).start()

    threads = [threading.Thread(target=accept, args=lt, daemon=True) for lt in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def ping(addr: tuple[str, int], count: int) -> float:
    """Median seconds of a Redis PING round trip to ``addr`` (after a warm-up)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for i in range(count + 5):
            t0 = time.perf_counter()
            s.sendall(b"PING\r\n")
            got = b""
            while not got.endswith(b"\r\n"):
                got += s.recv(64)
            if i >= 5:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    if sys.argv[1:2] == ["ping"]:
        count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
        print(f"{ping(_addr(sys.argv[2]), count) * 1000:.4f}")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay-ms", type=float, required=True, help="added to each direction")
    p.add_argument("routes", nargs="+", help="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    args = p.parse_args()
    routes = [(_addr(a), _addr(b)) for a, b in (r.split("=") for r in args.routes)]
    with contextlib.suppress(KeyboardInterrupt):
        serve(routes, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
