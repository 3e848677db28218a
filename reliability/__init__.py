"""A harness that breaks offload on purpose and counts what was lost.

Real ``offload worker`` processes run against a real backend while faults are injected (kill -9,
SIGTERM, a task that kills its own process, SIGSTOP past the lease, connections cut, a database
restart). A ledger file kept outside the backend records every enqueue acknowledgement and every
execution start and finish; the figures come from the ledger and the backend's final records.
``python -m reliability`` prints the table; ``tests/test_reliability.py`` runs the short form.
"""
