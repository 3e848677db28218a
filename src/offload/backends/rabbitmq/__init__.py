"""``amqp://`` / ``amqps://`` — RabbitMQ carries delivery (see docs/rabbitmq.md).

Two forms behind one URL scheme: with ``?store=`` (:mod:`.stored`) job state lives in a
state store and RabbitMQ only carries each job's id; without it (:mod:`.direct`) the job
travels in its message. ``broker`` (connection, publishing, queues), ``feed`` (consuming) and
``claim`` (deliveries into leased jobs) are RabbitMQ's own; what any broker-with-a-store needs
(the store adapter, the outbox) is in :mod:`offload.backends.brokered`.
"""

from offload.backends.rabbitmq.broker import HEARTBEAT_S
from offload.backends.rabbitmq.stored import RabbitMQBackend, rabbitmq_backend

__all__ = ["HEARTBEAT_S", "RabbitMQBackend", "rabbitmq_backend"]
