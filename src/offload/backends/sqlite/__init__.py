"""``sqlite:///path`` — the embedded default backend: one SQLite file, standard library only.

``sqlite:///offload.db`` is relative to the working directory, ``sqlite:////var/lib/x.db``
absolute. Query options (also accepted as keyword arguments, which win over the URL):
``synchronous=full|normal`` (default full), ``busy_timeout_ms`` (default 5000), ``poll_ms``
(default 50: how often waiters look at the file for other processes' writes), ``doorbell=1|0``
(default 1: wake waiters of other processes at once, see below).

Clock: the backend's clock is the host's ``time.time()``. Every process sharing a file runs on
the same machine, so they all read the same clock.

Threads: an instance owns a *writer* thread, the only user of its write connection, and a
*reader* thread with a second connection (WAL readers never block the writer). Coroutines hand a
function to a thread and await a future that the thread resolves with
``loop.call_soon_threadsafe``. The writer runs every request waiting in its queue in ONE
transaction (group commit), each request in its own savepoint so that one failing request (say,
``QueueFull``) does not undo the others. A caller cancelled while its request is queued does not
withdraw the request.

Several processes may share one file: each write transaction starts with ``BEGIN IMMEDIATE``,
which takes the file's write lock up front (waiting up to ``busy_timeout_ms``), so two claimants
never read the same due rows. A lock still held after that becomes BackendUnavailable.

Waking across processes (``doorbell.py``): an enqueue wakes this instance's waiters at once.
On Linux it also rings every other instance that waits on the file, in this process or another:
each waiting instance binds a Unix datagram socket in the abstract namespace (gone with its
process) and records its name as an empty file in ``<db>-wake/``; a thread per instance blocks
on it and wakes the instance's waiters, and a commit of new work (or of finished jobs, for
``wait_done``) sends one non-blocking datagram to each. Entries of dead processes are removed
by the first ring that finds nobody there. It is a hint: waiters still read ``PRAGMA
data_version`` every ``poll_ms``, so a lost ring, another OS or ``doorbell=0`` costs latency,
never work. The standard library's sockets suffice: no third-party package is involved.

Untrusted rows: a row that does not decode into a :class:`JobRecord` is put to ``dead`` with the
reason when a claim (or a dedup lookup) meets it, so it cannot block its queue; reads (get,
list_jobs, counts, workers) skip it and log a warning.
"""

from offload.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
