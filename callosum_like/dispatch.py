"""The serving side: from an incoming ``Call`` to exactly one reply.

Theory of operation: the Peer hands every decoded ``Call`` to ``Dispatcher.call`` and every
``Cancel`` to ``Dispatcher.cancel``. The dispatcher

* looks the method up (unknown -> ``Error(METHOD_NOT_FOUND)`` at once);
* applies the method's ordering per ``(calling link, Call.origin, order_key)`` (the origin
  tells apart the callers behind one relay) with the pure bookkeeping
  of ``ordering`` (``order_key=None`` runs unordered);
* shares ``max_pending`` and the ``max_concurrency`` execution slots fairly between the
  calling links, and between the origins on a link, with the books of ``fairness``: once
  ``max_pending`` requests are held, a caller over its share is answered ``Error(OVERLOADED)``
  at once instead of queued, and one under its share is admitted, pushing out the newest
  request not yet started of the caller most over its share (that one is answered
  ``Error(OVERLOADED)``: it never ran); at most ``max_pending + max_concurrency`` are held;
* starts requests that may start (their ordering allows it) round-robin across links, then
  across origins, as execution slots free up: at most ``max_concurrency`` handlers run at
  once (an unordered request that nothing waits before starts in the same step as it is
  admitted: ``FairShares.admit_running``). They run as jobs of one aiojobs ``Scheduler``,
  which owns their tasks and closes them; its own limit is off, as its FIFO queue would undo
  the round-robin order. A request keeps its slot until its reply is sent, so the slots bound
  the replies in flight too;
* runs the handler inside the peer's interceptors (``interceptors.InterceptorChain``), if
  it has any, in the handler's own task;
* turns the outcome into one reply: ``Result``, ``Failure`` (handler raised, with its
  traceback, which is also logged once to ``callosum_like.handlers`` at ERROR),
  ``Error(INTERNAL)`` (undecodable body, unencodable result), the error an interceptor
  refused the request with (``Error`` with its code) or ``Cancelled`` (execute timeout,
  caller's Cancel, or we are closing);
* runs a stream handler (an async generator) for a stream call: each yielded item goes out
  as a ``StreamItem`` once the consumer has granted credit (``STREAM_WINDOW`` at the start,
  more with each ``Credit``), so a slow consumer stops the generator; ``StreamEnd`` is the
  stream's reply when the generator finishes.

Invariant: every accepted call is answered exactly once while its link lives; ``drop_link``
forgets a dead link's calls without answering (nobody is there to hear), and ``aclose``
answers everything still held with ``Cancelled``.

Only ``peer`` calls this module. Replies leave through the ``send`` callback it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Any, Final

import aiojobs

from .deadlines import Deadline, Deadlines
from .errors import ErrorCode, ProtocolError
from .fairness import FairShares
from .inbound import (
    Inbound,
    Registration,
    Reply,
    UnencodableItem,
    earliest,
    error_name,
    expire,
    is_stream_handler,
    outcome_name,
    reply_to,
)
from .interceptors import InterceptorChain, Refusal
from .ordering import Ordering, ReplyReorder, SerialQueue
from .request import Handler, Request, make_request
from .stats import Counters, log_rpc, rpc_started
from .streams import CreditWindow, StreamInbox, UploadBody
from .wire import messages as m
from .wire.codec import pack_body, unpack_body

__all__ = ["Dispatcher", "Registration", "CLOSE_TIMEOUT", "outcome_name"]

log = logging.getLogger(__name__)
#: Where a handler that raised is logged, once, at ERROR with its traceback: a logger of its
#: own, so that users can turn it down (or up) apart from the framework's own records.
handler_log = logging.getLogger("callosum_like.handlers")

#: Seconds a handler gets to react to cancellation when the peer closes, before aiojobs
#: gives up on it (and logs it).
CLOSE_TIMEOUT: Final = 5.0

#: Packed bodies from this size on are dropped from a call as soon as they are unpacked,
#: so that the packed and the unpacked body are not both held while the handler runs.
RELEASE_BODY_SIZE: Final = 64 * 1024

SendReply = Callable[[Hashable, m.Message], Awaitable[None] | None]


class Dispatcher:
    """Runs handlers for one Peer.

    Args:
        send: Sends a reply to a link; must not raise for a link that is gone. Returns None
            once the reply is queued, else what is left of its sending, to await.
        default_ordering: The Peer's ordering for methods registered without one.
        max_concurrency: Handlers running at once.
        max_pending: Requests held at once (running plus waiting) before each caller is held
            to its fair share (see ``fairness``).
        execute_timeout: Seconds a handler may run before it is cancelled, or ``None``.
        counters: Where refused and failed requests are counted.
        interceptors: The Peer's interceptors, or ``None`` when it has none.
    """

    def __init__(
        self,
        *,
        send: SendReply,
        default_ordering: Ordering,
        max_concurrency: int,
        max_pending: int,
        execute_timeout: float | None,
        counters: Counters | None = None,
        interceptors: InterceptorChain | None = None,
    ) -> None:
        self._send = send
        self._interceptors = interceptors
        self._counters = counters or Counters()
        self._default_ordering = default_ordering
        self._fair: FairShares[Inbound] = FairShares(max_pending, max_concurrency)
        self._execute_timeout = execute_timeout
        self._handlers: dict[str, Registration] = {}
        self._inflight: dict[tuple[Hashable, int], Inbound] = {}
        self._reorder: ReplyReorder[Reply] = ReplyReorder()
        self._serial: SerialQueue[Inbound] = SerialQueue()
        self._scheduler: aiojobs.Scheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # from ``start`` on
        self._deadlines = Deadlines()  # execute timeouts
        self._closing = False

    # -- registry -----------------------------------------------------------------------------

    def register(self, name: str, handler: Handler, ordering: Ordering | None) -> None:
        """Register ``handler`` under ``name``, replacing any previous one.

        Raises:
            TypeError: ``name`` is not a non-empty str, ``handler`` not callable, or
                ``ordering`` not an ``Ordering`` or ``None``.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty str")
        if not callable(handler):
            raise TypeError("handler must be an async function taking a Request")
        if ordering is not None and not isinstance(ordering, Ordering):
            raise TypeError(f"ordering must be an Ordering or None, not {type(ordering).__name__}")
        self._handlers[name] = Registration(handler, ordering, is_stream_handler(handler))

    def unregister(self, name: str) -> None:
        """Remove the handler of ``name``. Raises ``KeyError`` when there is none."""
        del self._handlers[name]

    def serves(self, name: str) -> bool:
        """Whether a handler is registered under ``name``."""
        return name in self._handlers

    @property
    def running(self) -> int:
        """Requests held: running, or waiting for a slot or for their order key."""
        return len(self._inflight)

    @property
    def active(self) -> int:
        """Handlers running now (at most ``max_concurrency``)."""
        # A request keeps its slot while its reply goes out, after it stopped being held.
        return min(self._fair.running, self.running)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create the scheduler; needs a running loop."""
        self._loop = asyncio.get_running_loop()
        # No limit of its own: ``self._fair`` decides what starts when (see the module doc).
        self._scheduler = aiojobs.Scheduler(limit=None, close_timeout=CLOSE_TIMEOUT)

    async def aclose(self) -> None:
        """Cancel every handler and answer every held request with ``Cancelled``."""
        self._closing = True
        held = list(self._inflight.values())
        if self._scheduler is not None:
            await self._scheduler.close()
        self._deadlines.clear()
        for inbound in held:
            await self._answer(inbound, m.Cancelled(id=inbound.call.id, reason="peer closing"))
        self._inflight.clear()

    async def drop_link(self, link: Hashable) -> None:
        """The link is gone: cancel its handlers, and send nothing."""
        dropped = [i for i in self._inflight.values() if i.link == link]
        for inbound in dropped:  # first out of every queue, so that none of them starts
            inbound.silent = True
            self._unqueue(inbound)
        for inbound in dropped:
            if inbound.job is None:  # never started: only its books to close
                await self._answer(inbound, m.Cancelled(id=inbound.call.id, reason="link lost"))
        for inbound in dropped:
            if inbound.job is not None:
                await self._stop(inbound, "link lost")
        await self._start_ready()

    async def _stop(self, inbound: Inbound, reason: str) -> None:
        """Cancel a started request; answer it if its task was cancelled before it ran."""
        assert inbound.job is not None
        await inbound.job.close()
        await self._answer(inbound, m.Cancelled(id=inbound.call.id, reason=reason))

    # -- calls --------------------------------------------------------------------------------

    async def call(self, link: Hashable, peer_id: str, call: m.Call) -> None:
        """Accept one call from ``link``. Returns once it is scheduled, not when it is done."""
        registration = self._handlers.get(call.method)
        if registration is None:
            text = f"no handler for method {call.method!r}"
            await self._refuse(link, peer_id, call, ErrorCode.METHOD_NOT_FOUND, text)
            return
        if (link, call.id) in self._inflight:
            raise ProtocolError(f"call id {call.id} is already in flight")
        if self._closing:
            await self._send_whole(link, m.Cancelled(id=call.id, reason="peer closing"))
            self._counters.count_request_error("RPCCancelledError")
            return
        ordering = registration.ordering or self._default_ordering
        if call.order_key is None:
            ordering = Ordering.UNORDERED
        inbound = Inbound(link, call, peer_id, registration, ordering)
        if ordering is Ordering.UNORDERED and self._fair.admit_running(link, call.origin, inbound):
            self._hold(inbound)  # nothing waits for a slot: it starts now, its fair turn
            assert self._scheduler is not None
            inbound.job = await self._scheduler.spawn(self._run(inbound))
            return
        admission = self._fair.admit(link, call.origin, inbound)
        if not admission.admitted:
            self._counters.requests_refused += 1
            text = (
                f"{self._fair.held} requests already held (max_pending), "
                f"{self._fair.held_by(link)} of them from this link: its fair share or more"
            )
            await self._refuse(link, peer_id, call, ErrorCode.OVERLOADED, text)
            return
        self._hold(inbound)
        self._admit(inbound)
        if admission.pushed_out is not None:
            await self._push_out(admission.pushed_out)
        await self._start_ready()

    def _hold(self, inbound: Inbound) -> None:
        """Enter an admitted request among those held (its streams, its log clock)."""
        call = inbound.call
        inbound.started = rpc_started()
        if call.stream:
            inbound.credit = CreditWindow(m.STREAM_WINDOW)
        if call.upload:
            inbound.upload = StreamInbox(m.STREAM_WINDOW, m.UploadCredit)
        self._inflight[inbound.link, call.id] = inbound

    async def _refuse(
        self, link: Hashable, peer_id: str, call: m.Call, code: ErrorCode, text: str
    ) -> None:
        """Answer ``call`` with an error at once, without running anything."""
        started = rpc_started()
        await self._send_whole(link, m.Error(id=call.id, code=code, message=text))
        kind = error_name(code)
        self._counters.count_request_error(kind)
        if started is not None:
            log_rpc("served", call.method, peer_id, started, kind)

    def _admit(self, inbound: Inbound) -> None:
        """Enter an admitted request in its ordering's books; ready it if it may start."""
        if inbound.ordering is Ordering.ORDERED:
            inbound.ticket = self._reorder.arrive(inbound.order_key)
        elif inbound.ordering is Ordering.SERIALIZED and not self._serial.arrive(
            inbound.order_key, inbound
        ):
            inbound.behind_key = True  # waits for the running request of its key
            return
        self._fair.ready(inbound)

    async def _start_ready(self) -> None:
        """Start ready requests, in their fair turns, while execution slots are free."""
        if self._closing:
            return
        assert self._scheduler is not None
        while (inbound := self._fair.start_next()) is not None:
            inbound.job = await self._scheduler.spawn(self._run(inbound))

    async def _push_out(self, inbound: Inbound) -> None:
        """Refuse a held request that never started, to make room for a fairer one."""
        self._unqueue(inbound)
        self._counters.requests_refused += 1
        self._counters.requests_pushed_out += 1
        text = "pushed out before it started (max_pending): other callers were under their share"
        await self._answer(
            inbound, m.Error(id=inbound.call.id, code=ErrorCode.OVERLOADED, message=text)
        )

    def _unqueue(self, inbound: Inbound) -> None:
        """Take a request that has not started out of the queues, so it never starts."""
        if inbound.job is None:
            self._fair.release(inbound)
            if inbound.behind_key:
                self._serial.discard(inbound.order_key, inbound)

    def credit(self, link: Hashable, call_id: int, amount: int) -> None:
        """The consumer of stream ``call_id`` can take ``amount`` more items."""
        inbound = self._inflight.get((link, call_id))
        if inbound is None or inbound.credit is None or amount < 1:
            return  # the stream ended meanwhile, or a meaningless grant
        inbound.credit.grant(amount)

    def upload(self, link: Hashable, msg: m.UploadItem | m.UploadEnd) -> bool | None:
        """An item (or the end) of the streamed body of call ``msg.id``.

        Returns:
            True when queued for the handler; False when it exceeds the credit granted or
            follows the end; None when the call is over (items in flight after the handler
            returned are expected, and ignored).
        """
        inbound = self._inflight.get((link, msg.id))
        if inbound is None or inbound.upload is None:
            return None
        return inbound.upload.put(msg)

    async def cancel(self, link: Hashable, call_id: int) -> None:
        """The caller abandoned ``call_id``: stop it and answer ``Cancelled``."""
        inbound = self._inflight.get((link, call_id))
        if inbound is None:
            return  # already answered; the caller will discard that answer
        if inbound.job is None:  # waiting for its key, or for a slot
            self._unqueue(inbound)
            await self._answer(inbound, m.Cancelled(id=call_id, reason="cancelled by the caller"))
        else:
            await self._stop(inbound, "cancelled by the caller")
        await self._start_ready()

    # -- running ------------------------------------------------------------------------------

    async def _run(self, inbound: Inbound) -> None:
        """The job of ``inbound``: run its handler, answer it, start what may start next.

        One frame from the request to its answer: a 64-byte echo runs thousands of these a
        second, and every coroutine awaited on the way costs a frame.
        """
        call = inbound.call
        try:
            request = self._request(inbound)
            if type(request) is not Request:
                reply: Reply = request  # type: ignore[assignment]
            else:
                no_timeout = self._execute_timeout is None and call.timeout is None
                deadline = None if no_timeout else self._arm(inbound)
                try:
                    if self._interceptors is None and not call.stream:  # the common case
                        result = await inbound.registration.handler(request)
                    else:
                        result = await self._run_handler(inbound, request)
                except asyncio.CancelledError:
                    if not inbound.expired or inbound.task.uncancel():  # type: ignore[union-attr]
                        raise  # cancelled for another reason too
                    seconds = earliest(self._execute_timeout, call.timeout)
                    reply = m.Cancelled(id=call.id, reason=f"execute timeout of {seconds} s passed")
                except Exception as exc:
                    reply = self._failed(inbound, exc)
                else:
                    reply = reply_to(call, result)
                finally:
                    inbound.task = None  # from here on, the deadline can cancel nothing
                    if deadline is not None:
                        self._deadlines.discard(deadline)
        except asyncio.CancelledError:
            await self._cancelled(inbound)
            raise
        await self._answer(inbound, reply)
        if self._fair.startable:  # its slot is free: the next in turn starts
            await self._start_ready()

    async def _send_whole(self, link: Hashable, msg: m.Message) -> None:
        """Send ``msg`` to ``link`` (``send`` may return what is left of it to await)."""
        sending = self._send(link, msg)
        if sending is not None:
            await sending

    async def _cancelled(self, inbound: Inbound) -> None:
        """``inbound``'s job was cancelled: answer it (unless we are closing: ``aclose`` does).

        Whoever stopped it starts what may start next.
        """
        if not self._closing:
            await self._answer(inbound, m.Cancelled(id=inbound.call.id, reason="cancelled"))

    def _arm(self, inbound: Inbound) -> Deadline | None:
        """Start ``inbound``'s execute timeout, if it has one, in the current task."""
        call = inbound.call
        timeout = earliest(self._execute_timeout, call.timeout)
        if timeout is None:
            return None
        inbound.task = asyncio.current_task(self._loop)
        # One shared timer, not a timeout context per call.
        return self._deadlines.add(timeout, expire, inbound)

    def _failed(self, inbound: Inbound, exc: Exception) -> Reply:
        """The reply of a handler that raised ``exc`` (a failure is logged once)."""
        call = inbound.call
        if isinstance(exc, Refusal):  # an interceptor refused the request
            return m.Error(id=call.id, code=exc.error.code, message=exc.error.message)
        if isinstance(exc, UnencodableItem):
            return m.Error(id=call.id, code=ErrorCode.INTERNAL, message=f"stream item: {exc}")
        handler_log.error(
            "handler of %r for %r raised %r (the caller gets RPCUserError)",
            call.method,
            inbound.peer_id,
            exc,
            exc_info=exc,
        )
        return m.Failure.from_exception(call.id, exc)

    def _request(self, inbound: Inbound) -> Request | m.Error:
        """The handler's ``Request`` for ``inbound``, or the error that answers it instead."""
        call = inbound.call
        if call.stream != inbound.registration.stream:
            kind = "a stream: use Peer.stream()" if not call.stream else "not a stream"
            msg = f"method {call.method!r} is {kind}"
            return m.Error(id=call.id, code=ErrorCode.INTERNAL, message=msg)
        if inbound.upload is None:
            try:
                body = unpack_body(call.body)
            except ProtocolError as exc:
                return m.Error(id=call.id, code=ErrorCode.INTERNAL, message=str(exc))
            if len(call.body) >= RELEASE_BODY_SIZE:  # unpacked: let the packed copy go now
                inbound.call = dataclasses.replace(call, body=m.EMPTY_BODY)
        else:
            body = self._upload_body(inbound, inbound.upload)
        return make_request(call.method, body, inbound.peer_id, call.order_key, call.headers or {})

    def _upload_body(self, inbound: Inbound, upload: StreamInbox) -> UploadBody:
        """The body of a call whose body the caller streams (``upload``)."""
        link = inbound.link

        async def send_credit(msg: m.Message) -> None:
            if not inbound.silent:
                await self._send_whole(link, msg)

        return UploadBody(inbound.call.id, upload, send_credit, unpack_body)

    async def _run_handler(self, inbound: Inbound, request: Request) -> Any:
        """Run a stream handler, or any handler inside the peer's interceptors."""
        if self._interceptors is None:
            return await self._handle(inbound, request)
        handle = functools.partial(self._handle, inbound)
        return await self._interceptors.request(request, handle)

    async def _handle(self, inbound: Inbound, request: Request) -> Any:
        """Run the handler of ``inbound`` (the end of the interceptors' chain)."""
        if inbound.call.stream:
            await self._produce(inbound, request)
            return None
        return await inbound.registration.handler(request)

    async def _produce(self, inbound: Inbound, request: Request) -> None:
        """Run a stream handler, sending each item as the consumer's credit allows."""
        assert inbound.credit is not None
        items: AsyncGenerator[Any, None] = inbound.registration.handler(request)  # type: ignore[assignment]
        try:
            async for item in items:
                try:
                    packed = pack_body(item)
                except TypeError as exc:
                    raise UnencodableItem(str(exc)) from None
                await inbound.credit.take()
                if not inbound.silent:
                    await self._send_whole(
                        inbound.link, m.StreamItem(id=inbound.call.id, body=packed)
                    )
        finally:
            await items.aclose()

    async def _answer(self, inbound: Inbound, reply: Reply) -> None:
        """Send ``reply`` in the order the request's ordering demands, and free its key.

        Its place and its execution slot are freed once the reply is out; the caller then
        starts what may start next.
        """
        if inbound.answered:
            return
        inbound.answered = True
        self._inflight.pop((inbound.link, inbound.call.id), None)
        try:
            if inbound.ordering is Ordering.UNORDERED:  # no reply to wait for, no key to pass
                if not inbound.silent:
                    if type(reply) is not m.Result or inbound.started is not None:
                        self._account(inbound, reply)
                    sending = self._send(inbound.link, reply)
                    if sending is not None:  # queued at once, the common case, when None
                        await sending
                return
            released = self._in_order(inbound, reply)
            if not inbound.silent:
                self._account(inbound, reply)
                for item in released:
                    await self._send_whole(inbound.link, item)
            if inbound.ordering is Ordering.SERIALIZED and not inbound.behind_key:
                self._next_serial(inbound)  # it held its key: pass it on
        finally:
            self._fair.release(inbound)

    def _in_order(self, inbound: Inbound, reply: Reply) -> list[Reply]:
        """The replies that may go out now that ``inbound`` is answered with ``reply``."""
        if inbound.ordering is not Ordering.ORDERED:
            return [reply]
        # A request that never ran (cancelled, pushed out) holds no one back: out at once.
        ran = inbound.job is not None and not isinstance(reply, m.Cancelled)
        released = self._reorder.complete(inbound.order_key, inbound.ticket, reply if ran else None)
        return released if ran else [reply, *released]

    def _account(self, inbound: Inbound, reply: Reply) -> None:
        """Count ``inbound``'s outcome, ``reply``, if it is an error; log it if the log is on."""
        if type(reply) is not m.Result:
            outcome = outcome_name(reply)
            if outcome != "ok":
                self._counters.count_request_error(outcome)
        if inbound.started is not None:
            outcome = outcome_name(reply)
            log_rpc("served", inbound.call.method, inbound.peer_id, inbound.started, outcome)

    def _next_serial(self, inbound: Inbound) -> None:
        if self._closing:
            return
        nxt = self._serial.finish(inbound.order_key)
        if nxt is not None:
            nxt.behind_key = False
            self._fair.ready(nxt)
