"""The SQLite backend's cross-process doorbell (Linux): instant wake-ups between processes
that share one database file, so that a waiter need not poll the file to notice their writes.

A backend instance that waits (for work, or for a job to finish) *listens*: it binds a Unix
datagram socket in Linux's abstract namespace (no path, no length limit, gone when the process
dies) and records its name as an empty file in ``<db>-wake/``, one file per kind of ring it
wants: ``<token>.work``, ``<token>.done``. One daemon thread per listening instance blocks on the
socket and wakes the instance's local waiters.

An instance that commits work (or completions) *rings*: one non-blocking ``sendto`` to every
other listener of that kind. ECONNREFUSED means nobody binds that name any more (a dead
process): its files are removed. EAGAIN means its queue is full, so it is being woken anyway;
what it could not be told is sent with its next ring. The listing of ``<db>-wake/`` is cached and
read again only when the directory's mtime changes, so a ring costs one ``os.stat``.

A doorbell is a hint, never the truth: waiters still look at the file every ``poll_ms``, and a
lost ring costs latency, not work. Nothing heard is trusted beyond "look again".
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection

import msgspec

_log = logging.getLogger("offload.backends.sqlite")

WORK = "work"  # new or re-scheduled jobs: waiters for work look at the file again
DONE = "done"  # jobs that reached a final state: waiters for them read them again
_KINDS = (WORK, DONE)

_ADDRESS_PREFIX = b"\0offload-sqlite-wake:"
_CHECK_S = 1.0  # how often a listener makes sure its registry files still exist
# A directory modified this recently may be modified again within the same mtime tick (the
# kernel stamps with a coarse clock), so its listing is not cached until it is older.
_RACY_NS = 50_000_000
_MAX_IDS_BYTES = 8192  # a ring naming more finished jobs than this says "read all again"
_RECV_BYTES = 65536
_DRAIN_MAX = 4096  # datagrams read before waking anyone: a flood cannot starve the waiters

# The first byte of a datagram; a JSON array of job ids follows _DONE_IDS.
_F_WORK, _F_DONE_ALL, _F_DONE_IDS = 1, 2, 4

OnWork = Callable[[], None]
OnDone = Callable[[Collection[str] | None], None]  # None: every done waiter reads again


def supported() -> bool:
    """Abstract-namespace sockets are Linux only; elsewhere waiters only poll."""
    return sys.platform.startswith("linux")


def registry_dir(db_path: str) -> str:
    return db_path + "-wake"


def scope() -> str:
    """This network namespace's id. Abstract socket names are per network namespace, so a
    listener of another one (a container sharing the file) can be neither rung nor judged
    dead from here: its entries are left alone."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def address(token: str) -> bytes:
    """The abstract socket address of the listener registered as ``token``."""
    return _ADDRESS_PREFIX + token.encode()


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


class Doorbell:
    """One backend instance's listener (started by the first ``listen``) and ringer.

    ``on_work`` and ``on_done`` run on the listener's thread; they must only wake local
    waiters, never ring (a ring caused by a ring would bounce between processes for ever).
    """

    def __init__(self, db_path: str, on_work: OnWork, on_done: OnDone, name: str) -> None:
        self._dir = registry_dir(db_path)
        self._on_work, self._on_done, self._name = on_work, on_done, name
        self._scope = scope()
        # listening side, under _lock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._kinds: frozenset[str] = frozenset()
        self._failed = False  # could not listen: this instance polls until closed
        self._open = False  # between open() and close(): a straggler must not start a thread
        # ringing side, under _send_lock
        self._send_lock = threading.Lock()
        self._mtime_ns: int | None = None
        self._peers: dict[str, frozenset[str]] = {}  # token -> kinds it listens for
        self._out: dict[str, socket.socket] = {}  # one socket per peer: see _send
        self._owed: set[str] = set()  # peers whose queue was full at a ring
        self.sent = 0  # datagrams sent and heard: for tests and the curious
        self.heard = 0

    @property
    def listening(self) -> bool:
        return self._thread is not None

    def open(self) -> None:
        """Allow ``listen`` and ``ring`` (both are no-ops before, and after ``close``)."""
        with self._lock:
            self._open = True

    # -- listening ---------------------------------------------------------------------------

    def listen(self, kind: str) -> None:
        """Make sure rings of ``kind`` reach this instance (idempotent, cheap when done).
        On failure (a directory it cannot write, say) it logs once and the instance polls."""
        if kind in self._kinds or self._failed:
            return
        with self._lock:
            if kind in self._kinds or self._failed or not self._open:
                return
            try:
                token = self._token or self._start()
                self._register(f"{token}.{kind}")
            except OSError as exc:
                self._failed = True
                _log.warning(
                    "no doorbell on %s (waiters poll the file instead): %s", self._dir, exc
                )
                return
            self._kinds = self._kinds | {kind}

    def _start(self) -> str:
        token = f"{self._scope}-{os.getpid()}-{secrets.token_hex(8)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(address(token))  # bound before it is registered: never judged dead
            sock.setblocking(False)
            os.makedirs(self._dir, exist_ok=True)
        except BaseException:
            sock.close()
            raise
        self._stop = threading.Event()
        thread = threading.Thread(
            target=self._main,
            args=(sock, token, self._stop),
            name=f"offload-sqlite-doorbell:{self._name}",
            daemon=True,
        )
        thread.start()
        self._sock, self._token, self._thread = sock, token, thread
        return token

    def _register(self, entry: str) -> None:
        path = os.path.join(self._dir, entry)
        try:
            _touch(path)
        except FileNotFoundError:  # the directory itself was removed
            os.makedirs(self._dir, exist_ok=True)
            _touch(path)

    def _main(self, sock: socket.socket, token: str, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        checked = time.monotonic()
        while not stop.is_set():
            messages = self._drain(sock) if poller.poll(_CHECK_S * 1000) else []
            if stop.is_set():
                return
            if messages:
                self._deliver(messages)
            if time.monotonic() - checked >= _CHECK_S:
                checked = time.monotonic()
                self._check_registered(token)

    def _drain(self, sock: socket.socket) -> list[bytes]:
        messages: list[bytes] = []
        while len(messages) < _DRAIN_MAX:
            try:
                messages.append(sock.recv(_RECV_BYTES))
            except BlockingIOError:
                break
        self.heard += sum(1 for msg in messages if msg)  # close() wakes it with an empty one
        return messages

    def _deliver(self, messages: list[bytes]) -> None:
        work, done_all, ids = False, False, set[str]()
        for msg in messages:
            flags = msg[0] if msg else 0
            work = work or bool(flags & _F_WORK)
            if flags & _F_DONE_ALL:
                done_all = True
            elif flags & _F_DONE_IDS:
                try:
                    ids.update(msgspec.json.decode(msg[1:], type=list[str]))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    done_all = True  # anyone on the host may send here: just read all again
        try:
            if work:
                self._on_work()
            if done_all or ids:
                self._on_done(None if done_all else ids)
        except Exception:  # a waiter's loop may be gone; the thread must go on for the others
            _log.exception("sqlite doorbell: waking local waiters failed")

    def _check_registered(self, token: str) -> None:
        # Someone may have cleaned the directory: put the entries back (close() removes them
        # only once this thread has ended).
        for kind in self._kinds:
            path = os.path.join(self._dir, f"{token}.{kind}")
            if not os.path.exists(path):
                try:
                    self._register(f"{token}.{kind}")
                except OSError as exc:
                    _log.warning("sqlite doorbell: cannot re-register %s: %s", path, exc)

    # -- ringing -----------------------------------------------------------------------------

    def ring(
        self, *, work: bool = False, done: Collection[str] = (), done_all: bool = False
    ) -> None:
        """Tell every other listener of the file: new work, or these jobs (or any) finished.
        Never blocks; errors are the listeners' problem, not the caller's."""
        if not (work or done or done_all) or not self._open:
            return
        ids: bytes | None = None  # encoded for the first listener that wants them
        with self._send_lock:
            own = self._token
            for token, kinds in list(self._listing().items()):
                if token == own:
                    continue
                owed = token in self._owed  # what a full queue made it miss, it gets now
                flags = _F_WORK if WORK in kinds and (work or owed) else 0
                payload = b""
                if DONE in kinds and (done or done_all or owed):
                    if ids is None and not done_all:
                        ids = msgspec.json.encode(list(done))
                        done_all = len(ids) > _MAX_IDS_BYTES
                    if done_all or owed:
                        flags |= _F_DONE_ALL
                    else:
                        flags, payload = flags | _F_DONE_IDS, ids or b""
                if flags:
                    self._send(token, bytes([flags]) + payload)

    def _send(self, token: str, datagram: bytes) -> None:
        # One sending socket per peer: datagrams queued at a peer that does not read (a stopped
        # process) are charged to the socket that sent them, and a shared socket's send buffer
        # would fill and refuse rings to every peer.
        try:
            sock = self._out.get(token)
            if sock is None:
                sock = self._out[token] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
            sock.sendto(datagram, address(token))
        except BlockingIOError:
            self._owed.add(token)
            return
        except ConnectionRefusedError:  # nobody binds that name: its process is gone
            self._forget(token)
            return
        except OSError as exc:
            _log.debug("sqlite doorbell: ring to %s failed: %s", token, exc)
            return
        self._owed.discard(token)
        self.sent += 1

    def _forget(self, token: str) -> None:
        for kind in _KINDS:
            try:
                os.unlink(os.path.join(self._dir, f"{token}.{kind}"))
            except OSError:
                pass
        self._peers.pop(token, None)
        self._owed.discard(token)
        sock = self._out.pop(token, None)
        if sock is not None:
            sock.close()

    def _listing(self) -> dict[str, frozenset[str]]:
        now_ns = time.time_ns()
        try:
            mtime_ns = os.stat(self._dir).st_mtime_ns
        except OSError:
            mtime_ns = None
        if mtime_ns is not None and mtime_ns == self._mtime_ns:
            return self._peers
        try:
            names = os.listdir(self._dir) if mtime_ns is not None else []
        except OSError:
            names = []
        peers: dict[str, set[str]] = {}
        mine = self._scope + "-"
        for name in names:
            token, _, kind = name.rpartition(".")
            if kind in _KINDS and token.startswith(mine):
                peers.setdefault(token, set()).add(kind)
        self._peers = {token: frozenset(kinds) for token, kinds in peers.items()}
        for token in set(self._out) - set(self._peers):
            self._out.pop(token).close()
        self._owed &= set(self._peers)
        recent = mtime_ns is not None and now_ns - mtime_ns < _RACY_NS
        self._mtime_ns = None if recent else mtime_ns
        return self._peers

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, remove this listener's entries, close every socket. A later
        ``listen`` starts afresh under a new name."""
        with self._lock:
            sock, thread, token, kinds = self._sock, self._thread, self._token, self._kinds
            self._sock = self._thread = self._token = None
            self._kinds, self._failed, self._open = frozenset(), False, False
            if thread is not None and sock is not None and token is not None:
                self._stop.set()
                try:
                    sock.sendto(b"", address(token))  # wake it; a full queue wakes it too
                except OSError:
                    pass
                thread.join(timeout=5)
            for kind in kinds:  # after the join: the thread may have just re-registered
                try:
                    os.unlink(os.path.join(self._dir, f"{token}.{kind}"))
                except OSError:
                    pass
            if kinds:
                try:  # the last listener out leaves no directory behind; others re-create it
                    os.rmdir(self._dir)
                except OSError:
                    pass
            if sock is not None:
                sock.close()
        with self._send_lock:
            for out in self._out.values():
                out.close()
            self._out.clear()
            self._peers, self._mtime_ns = {}, None
            self._owed.clear()
