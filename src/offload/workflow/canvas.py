"""Signatures, chains and groups: a workflow's shape, validated and flattened at enqueue.

``task.s(...)`` is a step that receives the previous step's result as its first argument;
``task.si(...)`` one that does not. ``chain(a, b, c)`` runs them in turn, ``group(a, b)`` side
by side, ``group(...).then(c)`` runs ``c`` with the list of the group's results. They nest:
a group in a chain receives the previous result in each member, and the step after a group
receives the list of its results.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from offload.errors import ValidationError
from offload.job import new_job_id
from offload.task import EnqueueOptions
from offload.workflow.record import Feed, Step, WorkflowRecord

if TYPE_CHECKING:
    from offload.app import App
    from offload.task import Task
    from offload.workflow.handle import Workflow

_PIPED = object()  # stands in for the argument a previous step's result fills


@dataclass(frozen=True)
class Signature:
    """One step: a task, its arguments and its options (queue, priority, max_attempts)."""

    task: Task[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    opts: EnqueueOptions = field(default_factory=EnqueueOptions)

    def enqueue(self) -> Workflow:
        return chain(self).enqueue()

    async def aenqueue(self) -> Workflow:
        return await chain(self).aenqueue()


@dataclass(frozen=True)
class Group:
    """Members run side by side; ``then(callback)`` runs once every member has ended."""

    members: tuple[Signature | Chain | Group, ...]
    continue_on_failure: bool = False
    callback: Signature | Chain | Group | None = None

    def then(self, callback: Signature | Chain | Group) -> Group:
        if self.callback is not None:
            return Group(self.members, self.continue_on_failure, chain(self.callback, callback))
        return Group(self.members, self.continue_on_failure, callback)

    def enqueue(self) -> Workflow:
        return chain(self).enqueue()

    async def aenqueue(self) -> Workflow:
        return await chain(self).aenqueue()


@dataclass(frozen=True)
class Chain:
    """Items run one after the other, each after the previous one succeeded."""

    items: tuple[Signature | Chain | Group, ...]

    def enqueue(self) -> Workflow:
        """Store the whole workflow in one backend write; return its handle."""
        record = build(self)
        return _app_of(self).enqueue_workflow(record)

    async def aenqueue(self) -> Workflow:
        """``enqueue`` for async code."""
        record = build(self)
        return await _app_of(self).aenqueue_workflow(record)


Node = Signature | Chain | Group


def chain(*items: Node) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: each step after the previous succeeded, with its result."""
    _check_nodes(items, "chain")
    return Chain(tuple(items))


def group(*members: Node, continue_on_failure: bool = False) -> Group:
    """``group(a.s(1), a.s(2))``: side by side. With ``continue_on_failure=True`` a member that
    ends dead does not fail the workflow: its place in the results holds
    ``{"failed": true, "error": ...}``."""
    _check_nodes(members, "group")
    return Group(tuple(members), continue_on_failure)


def _check_nodes(nodes: Sequence[object], what: str) -> None:
    if not nodes:
        raise ValidationError(f"a {what} needs at least one step")
    for n in nodes:
        if not isinstance(n, Signature | Chain | Group):
            raise ValidationError(
                f"a {what} takes signatures (task.s(...), task.si(...)), chains and groups, "
                f"not {n!r}"
            )


def _signatures(node: Node) -> list[Signature]:
    if isinstance(node, Signature):
        return [node]
    if isinstance(node, Chain):
        return [s for item in node.items for s in _signatures(item)]
    found = [s for m in node.members for s in _signatures(m)]
    return found + (_signatures(node.callback) if node.callback is not None else [])


def _app_of(node: Node) -> App:
    apps = {id(s.task.app): s.task.app for s in _signatures(node)}
    if len(apps) != 1:
        raise ValidationError("every step of a workflow must be a task of the same app")
    return next(iter(apps.values()))


# -- flattening ---------------------------------------------------------------------------------


def build(node: Node) -> WorkflowRecord:
    """The record of a workflow (steps flattened, arguments validated), nothing stored yet.

    Raises ValidationError naming the task and argument that does not fit, as ``enqueue`` does.
    """
    steps: list[Step] = []
    _flatten(node, (), Feed.NONE, steps)
    return WorkflowRecord(id=new_job_id(), created_at=0.0, steps=tuple(steps))


def _flatten(
    node: Node, parents: tuple[int, ...], feed: Feed, out: list[Step]
) -> tuple[tuple[int, ...], Feed]:
    """Append ``node``'s steps; return its last steps and what the next step receives."""
    if isinstance(node, Signature):
        out.append(_step(node, parents, feed))
        return (len(out) - 1,), Feed.ONE
    if isinstance(node, Chain):
        for item in node.items:
            parents, feed = _flatten(item, parents, feed, out)
        return parents, feed
    tails: tuple[int, ...] = ()
    for member in node.members:
        ends, _ = _flatten(member, parents, feed, out)
        if node.continue_on_failure:
            for i in ends:  # only a member's last step: a chain member fails as a chain does
                out[i] = msgspec.structs.replace(out[i], tolerate=True)
        tails += ends
    if node.callback is None:
        return tails, Feed.ALL
    return _flatten(node.callback, tails, Feed.ALL, out)


def _step(sig: Signature, parents: tuple[int, ...], feed: Feed) -> Step:
    task, o = sig.task, sig.opts
    if o.delay is not None or o.run_at is not None or o.key is not None:
        raise ValidationError(
            f"task {task.name}: a workflow step takes queue, priority, max_attempts and "
            "headers only"
        )
    piped = bool(parents) and not sig.immutable
    if piped:
        args, pipe = _encode_piped(task, sig.args, sig.kwargs)
    else:
        args, pipe = task.encode_args(*sig.args, **sig.kwargs), None
    cfg = task.config
    queue = o.queue or cfg.queue
    return Step(
        task=task.name,
        queue=queue,
        args=msgspec.Raw(args),
        priority=cfg.priority if o.priority is None else o.priority,
        max_attempts=o.max_attempts or cfg.max_attempts,
        parents=parents,
        feed=feed if parents else Feed.NONE,
        pipe=pipe,
        # From the arguments known now: a limit keyed on the piped argument cannot be, and
        # raises ValidationError here rather than let the step run unlimited.
        limits=task.limit_buckets(args, queue),
        headers=dict(o.headers) if o.headers else {},
        retention=task.retention,
    )


def _encode_piped(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bytes, str]:
    """Validate every argument but the first, which a previous step's result fills (and
    which the worker checks when the step's job runs, as it checks any stored job)."""
    sig = inspect.signature(task.fn)
    params = list(sig.parameters)
    if not params:
        raise ValidationError(
            f"task {task.name} takes no argument to receive the previous result; "
            "use task.si(...) for a step that ignores it"
        )
    pipe = params[0]
    try:
        bound = sig.bind(_PIPED, *args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"task {task.name}: {exc}") from None
    values = {k: v for k, v in bound.arguments.items() if k != pipe}
    rest = task.args_type_without(pipe)
    try:
        return msgspec.json.encode(msgspec.convert(values, rest, strict=True)), pipe
    except (msgspec.ValidationError, TypeError) as exc:
        raise ValidationError(f"task {task.name}: invalid arguments: {exc}") from None
