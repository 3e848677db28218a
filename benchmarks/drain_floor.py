"""How fast one process can take messages off RabbitMQ through aio-pika, doing nothing else.

Issue 15 asks offload's RabbitMQ drain (one worker process, a sync task) for five times
Celery's. offload's worker consumes through aio-pika, so no drain of it can pass what aio-pika
alone delivers and acknowledges in one process. This measures that floor: ``--messages``
persistent 100-byte messages on a durable queue, consumed with a prefetch of 200, each
acknowledged on its own, then the same acknowledged 100 at a time (``multiple=True``: what
offload's batched acknowledgements do)::

    python benchmarks/drain_floor.py [--messages 20000] [--rounds 3]

Messages per second from the first delivery to the last; the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ACK_EVERY = 100


async def fill(channel: aio_pika.abc.AbstractChannel, queue: str, n: int) -> None:
    body = b"x" * 100
    for _ in range(n):
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=queue)


async def drain(
    connection: aio_pika.abc.AbstractConnection, queue: str, n: int, every: int
) -> float:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=200)
    source = await channel.get_queue(queue)
    done = asyncio.Event()
    seen = 0
    first = 0.0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen, first
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        if every == 1:
            await message.ack()
        elif seen % every == 0 or seen == n:
            await message.ack(multiple=True)
        if seen == n:
            done.set()

    tag = await source.consume(on_message)
    await asyncio.wait_for(done.wait(), 300)
    rate = n / (time.perf_counter() - first)
    await source.cancel(tag)
    await channel.close()
    return rate


async def run(n: int, rounds: int) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    publisher = await connection.channel(publisher_confirms=False)
    name = f"drain-floor-{uuid.uuid4().hex[:8]}"
    queue = await publisher.declare_queue(name, durable=True)
    rates: dict[str, list[float]] = {"each": [], f"{ACK_EVERY} at a time": []}
    try:
        for _ in range(rounds):
            for label, every in (("each", 1), (f"{ACK_EVERY} at a time", ACK_EVERY)):
                await fill(publisher, name, n)
                rates[label].append(await drain(connection, name, n, every))
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
    print("| consumer | messages/s |")
    print("|---|---:|")
    for label, got in rates.items():
        print(f"| aio-pika, acknowledged {label} | {statistics.median(got):,.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.messages} messages x {args.rounds}\n")
    asyncio.run(run(args.messages, args.rounds))


if __name__ == "__main__":
    main()
