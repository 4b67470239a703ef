"""Asking any actor for a reply from asyncio code, without blocking the loop.

pykka's futures block (``get``; even ``await`` on one blocks the thread), so
code on the event loop would deadlock waiting for an actor that needs the
same loop. :func:`ask_async` puts the message in the actor's inbox with a
reply slot that settles an *asyncio* future on the asking loop instead::

    record = await call_async(registry_ref, "get", peer)      # a proxy-style call
    answer = await ask_async(ref, SomeQuestion())             # an on_receive message

Both work for any actor, ThreadingActor or LoopActor. The handler's
exception (or ActorDeadError when the actor is gone) is raised by the
``await``. Private pykka 4.5.0 attributes used: ``pykka._envelope.Envelope``
and an actor's ``actor_inbox.put`` (tests/kernel/test_hooks_pykka.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRef
from pykka._envelope import Envelope
from pykka.messages import ProxyCall

__all__ = ["ask_async", "call_async"]

OptExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class _AsyncReply(pykka.Future[Any]):
    """The reply slot of an ``ask_async`` envelope: settles an asyncio future on its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: asyncio.Future[Any]) -> None:
        super().__init__()
        self._loop = loop
        self._target = target
        self._settled = False

    def get(self, *, timeout: float | None = None) -> Any:
        raise RuntimeError("await the asyncio future returned by ask_async() instead")

    def set(self, value: Any | None = None) -> None:
        self._deliver(_resolve, value)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        exc_type, exc, _ = exc_info if exc_info is not None else sys.exc_info()
        if exc is None:
            exc = exc_type() if exc_type is not None else RuntimeError("unknown error")
        self._deliver(_reject, exc)

    def _deliver(self, fn: Callable[[asyncio.Future[Any], Any], None], arg: Any) -> None:
        if self._settled:
            raise queue.Full  # what pykka's futures raise on a second set
        self._settled = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            fn(self._target, arg)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left awaiting
            self._loop.call_soon_threadsafe(fn, self._target, arg)


def _resolve(target: asyncio.Future[Any], value: Any) -> None:
    if not target.done():
        target.set_result(value)


def _reject(target: asyncio.Future[Any], exc: BaseException) -> None:
    if not target.done():
        # asyncio refuses StopIteration, and a KeyboardInterrupt/SystemExit raised in a
        # task would escape the loop itself: hand the awaiting coroutine an Exception.
        if isinstance(exc, StopIteration) or not isinstance(exc, Exception):
            wrapped = ActorDeadError(f"the actor failed with {exc!r}")
            wrapped.__cause__ = exc
            exc = wrapped
        target.set_exception(exc)


def ask_async(ref: ActorRef[Any], message: Any) -> asyncio.Future[Any]:
    """Ask any actor from a coroutine without blocking the loop: ``await ask_async(ref, msg)``.

    Must be called on a running loop. The answer (or the handler's exception,
    or ActorDeadError) settles the returned future on this loop.
    """
    loop = asyncio.get_running_loop()
    target: asyncio.Future[Any] = loop.create_future()
    if not ref.is_alive():
        target.set_exception(ActorDeadError(f"{ref} not found"))
        return target
    ref.actor_inbox.put(Envelope(message, reply_to=_AsyncReply(loop, target)))
    return target


def call_async(ref: ActorRef[Any], method: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """``await call_async(ref, "store", record)``: a proxy-style method call via :func:`ask_async`."""
    return ask_async(ref, ProxyCall(attr_path=tuple(method.split(".")), args=args, kwargs=kwargs))
