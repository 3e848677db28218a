"""The offload demo: a few thousand jobs into SQLite, a worker runs them with a progress bar,
then the HTTP service starts with embedded workers (and the dashboard, where installed).

    make run            # or: .venv/bin/python examples/demo.py [--jobs 3000] [--no-serve]

Ctrl-C stops it at any point with one line, "stopped", and exit status 0: it is how the demo is
meant to end, as a worker ends cleanly on SIGINT. (make adds its own "Interrupt" line.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import offload  # noqa: E402
from offload.job import JobState  # noqa: E402
from offload.worker import Worker, WorkerConfig  # noqa: E402

DB = ROOT / "examples" / "demo.db"
app = offload.App(f"sqlite:///{DB}", queue_limits={"emails": 10_000})  # --db moves it


@app.task(
    name="resize_image",
    expose=True,
    queue="images",
    max_attempts=4,
    retry=offload.ExponentialBackoff(0.05),
)
async def resize_image(image_id: int, width: int = 640) -> dict[str, int]:
    """Pretend to resize an image; one in twenty attempts fails and is retried."""
    await asyncio.sleep(random.uniform(0.001, 0.01))
    if random.random() < 0.05:
        raise OSError(f"storage hiccup while reading image {image_id}")
    return {"image_id": image_id, "width": width}


@app.task(name="send_email", expose=True, queue="emails")
def send_email(to: str, subject: str) -> str:
    """Pretend to send an email (a sync task: runs in the worker's thread pool)."""
    return f"sent {subject!r} to {to}"


async def run_batch(jobs: int) -> None:
    console = Console()
    await app.open()
    half = jobs // 2
    batch = [resize_image.prepare(i, width=random.choice([320, 640, 1280])) for i in range(half)]
    batch += [send_email.prepare(f"user{i}@example.com", "Welcome!") for i in range(jobs - half)]
    await app.aenqueue_many(batch)
    console.print(f"enqueued {jobs} jobs; a worker with 50 slots runs them")
    worker = Worker(app, WorkerConfig(queues=("images", "emails"), concurrency=50, poll_s=0.1))
    run = asyncio.create_task(worker.run())
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("jobs", total=jobs, detail="")
        while True:
            counts = await app.call(lambda b: b.counts())
            done = sum(by.get(s, 0) for by in counts.values() for s in JobState if s.final)
            waiting = sum(by.get(JobState.SCHEDULED, 0) for by in counts.values())
            progress.update(
                bar,
                completed=min(done, jobs),
                detail=f"busy {worker.busy:>2}/{worker.concurrency}, retrying {waiting}",
            )
            if done >= jobs:
                break
            await asyncio.sleep(0.1)
    await worker.stop()
    await run
    counts = await app.call(lambda b: b.counts())
    for queue, by in sorted(counts.items()):
        console.print(f"  {queue:>7}: " + ", ".join(f"{n} {s}" for s, n in sorted(by.items())))
    await app.close()


def main() -> None:
    p = argparse.ArgumentParser(description="the offload demo")
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--no-serve", action="store_true", help="stop after the batch")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", type=Path, default=DB, help="the SQLite file (recreated)")
    args = p.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    app.use_url(f"sqlite:///{args.db}")
    asyncio.run(run_batch(args.jobs))
    if args.no_serve:
        return
    from offload.server import run_server

    Console().print(
        f"serving http://127.0.0.1:{args.port}/ with 4 embedded worker slots; Ctrl-C stops"
    )
    run_server(app, host="127.0.0.1", port=args.port, workers=4)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # uvicorn shuts the service down on SIGINT, then raises the signal again for whoever
        # called it; here that is the user's Ctrl-C, and the only thing left to do is say so.
        Console().print("stopped")
