"""Fault injection from outside: crash one actor of a running node, to watch supervision work.

::

    node.crash_actor("listener")                 # needs [testing] fault_injection = true
    {"op": "crash", "actor": "link"}             # the same through the control socket

The kinds (:data:`KINDS`) are the root supervisor's children (``registry``,
``sessions``, ``links``, ``listener``, ``discovery``: restarted per its
rest_for_one strategy), ``session`` (the oldest pairing session that holds a pairing, a
temporary child: never restarted) and ``link`` (a link worker, restarted by the
links supervisor; the one of ``peer`` when given). The chosen actor is told
:class:`~quicpair.actors.kernel.exits.InjectedCrash` and raises from its
handler: an ordinary crash, seen by its supervisor exactly like a bug would be
(``actor.exited``, then ``actor.restarted`` or, past the restart intensity,
``supervisor.escalated`` and ``node.failed``).
"""

from __future__ import annotations

from typing import Any

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.exits import InjectedCrash
from quicpair.protocol.errors import ConfigError
from quicpair.protocol.identity import NodeId

__all__ = ["KINDS", "ROOT_CHILDREN", "crash_actor"]

#: The children of the node's root supervisor, in start order (actors/node.py).
ROOT_CHILDREN = ("registry", "sessions", "links", "listener", "discovery")
#: What :func:`crash_actor` can crash.
KINDS = (*ROOT_CHILDREN, "session", "link")
#: Bound on asking a supervisor which children it has.
_ASK_TIMEOUT = 10.0


def crash_actor(ctx: NodeContext, root: pykka.ActorRef[Any], kind: str, peer: NodeId | None = None) -> str:
    """Crash the running actor of ``kind``; returns its name. ConfigError unless injection is on.

    ValueError for an unknown kind, or when no such actor runs right now (no
    pairing session, no link worker, a child waiting for its restart).
    """
    if not ctx.settings.testing.fault_injection:
        raise ConfigError(
            "fault injection is off: it crashes actors on purpose, for tests only; "
            "set [testing] fault_injection = true to allow it"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown actor kind {kind!r}; one of {', '.join(KINDS)}")
    if peer is not None and kind != "link":
        raise ValueError("a peer is only given with the actor kind 'link'")
    try:
        name, ref = _find(ctx, root, kind, peer)
    except (pykka.ActorDeadError, pykka.Timeout) as exc:  # a supervisor between two lives
        raise ValueError(f"the supervisor of {kind} is restarting; try again") from exc
    try:
        ref.tell(InjectedCrash(f"crash of {kind} asked from outside"))
    except pykka.ActorDeadError as exc:
        raise ValueError(f"{name} stopped before it could be crashed; try again") from exc
    ctx.log.warning("testing.crash_injected", kind=kind, actor=name)
    return name


def _find(
    ctx: NodeContext, root: pykka.ActorRef[Any], kind: str, peer: NodeId | None
) -> tuple[str, pykka.ActorRef[Any]]:
    if kind in ROOT_CHILDREN:
        return _child(root, kind)
    if kind == "session":
        sessions = ctx.sessions
        if sessions is None:
            raise ValueError("the sessions supervisor is restarting; try again")
        for info in sessions.proxy().which_children().get(timeout=_ASK_TIMEOUT):
            if info.ref is None:
                continue
            try:
                spare = info.ref.proxy().is_spare().get(timeout=_ASK_TIMEOUT)
            except pykka.ActorDeadError:
                continue
            if not spare:  # a spare initiator session holds no pairing: not what is asked for
                return info.name, info.ref
        raise ValueError("no pairing session is running")
    links = ctx.link_supervisor
    if links is None:
        raise ValueError("the links supervisor is restarting; try again")
    workers: dict[NodeId, pykka.ActorRef[Any]] = links.proxy().worker_refs().get(timeout=_ASK_TIMEOUT)
    if peer is not None:
        if peer not in workers:
            raise ValueError(f"no link worker runs for {peer.fingerprint}")
        return f"link-{peer.fingerprint}", workers[peer]
    if not workers:
        raise ValueError("no link worker is running")
    first = min(workers)
    return f"link-{first.fingerprint}", workers[first]


def _child(root: pykka.ActorRef[Any], name: str) -> tuple[str, pykka.ActorRef[Any]]:
    for info in root.proxy().which_children().get(timeout=_ASK_TIMEOUT):
        if info.name == name:
            if info.ref is None:
                raise ValueError(f"{name} is waiting for its restart; try again")
            return name, info.ref
    raise ValueError(f"the node has no {name} actor running")
