"""``amqp://`` / ``amqps://`` — RabbitMQ carries delivery (see docs/rabbitmq.md).

Two forms behind one URL scheme: with ``?store=`` (:mod:`.stored`) job state lives in a
state store and RabbitMQ only carries each job's id; without it (:mod:`.direct`) the job
travels in its message. What both forms share: ``options`` (the URL), ``delays`` (delays in
milliseconds, TTL chains), ``connection`` (topology, publishing), ``broker`` (a connection
and its feeds) and ``feed`` (consuming one queue). ``claim`` (deliveries into leased jobs)
belongs to the store-backed form; what any broker-with-a-store needs (the store adapter, the
outbox) is in :mod:`offload.backends.brokered`, which this form serves through
:class:`~offload.backends.rabbitmq.claim.RecordPublisher`.
"""

from offload.backends.rabbitmq.options import HEARTBEAT_S
from offload.backends.rabbitmq.stored import RabbitMQBackend, rabbitmq_backend

__all__ = ["HEARTBEAT_S", "RabbitMQBackend", "rabbitmq_backend"]
