"""The caller's side of a Peer: calls and streams we make, their timeouts and outcomes.

Theory of operation: ``Peer.invoke`` and ``Peer.stream`` pick the link (``remotes``) and
hand the rest to ``Caller``:

* ``call`` builds the ``Call`` (the body packed and checked against both sides'
  ``max_body_size`` before anything is sent), registers a future on the link, sends, and
  waits for the reply *message*; the receive loop only resolves the future, and the
  caller's own task unpacks the body (``outcome``), so the loop does no per-body work.
* A timeout is one entry in the shared ``Deadlines`` timer, not a timeout context per
  call; when it fires it cancels the calling task, which turns that into
  ``RPCTimeoutError``. A cancelled or timed-out call is *abandoned*: the link sends
  ``Cancel`` and the session keeps the call as CANCELLING until the late answer comes.
* A streamed body (an async iterable) is pumped a credit window ahead of the handler; a
  handler may answer before reading it all, which stops the pump.
* ``stream`` iterates a stream call's inbox, granting credit back as items are consumed;
  leaving early (or its timeout) abandons it.
* A send that finds the link gone ends the link at once (``link_gone``), so that ``peers``
  and ``wait_for_peer`` are truthful for a caller that retries.
* A Peer with interceptors puts ``interception.InterceptedCaller`` in front of this one;
  nothing here knows of them.

Only ``peer`` uses this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

from .deadlines import Deadline, Deadlines
from .errors import (
    MessageTooLargeError,
    PeerDisconnectedError,
    RPCInternalError,
    RPCTimeoutError,
    UnknownPeerError,
)
from .link import Link
from .options import check_call_args, check_timeout
from .replies import call_outcome, outcome
from .request import Body, Headers
from .session import CallInput
from .stats import Counters, log_rpc, rpc_started
from .streams import CreditWindow, StreamInbox
from .wire import messages as m
from .wire.codec import pack_body, unpack_body

__all__ = ["Caller", "UPLOAD_WINDOW"]

#: Items of a streamed body that may run ahead of the handler reading them.
UPLOAD_WINDOW: Final = m.STREAM_WINDOW

#: Body types that are certainly not streamed (``AsyncIterable``): ``invoke``'s fast path.
_PLAIN_BODIES: Final = frozenset({bytes, str, int, float, bool, type(None), list, dict, tuple})
#: Ends a link whose send found it gone: ``(link, the send's error)``.
LinkGone = Callable[[Link, PeerDisconnectedError], Awaitable[None]]
#: Finds the link that reaches ``to`` and the target to send with.
Route = Callable[[str | None], tuple[Link, str | None]]


class Caller:
    """Makes the calls and streams of one Peer.

    Args:
        counters: Where calls made and their errors are counted.
        invoke_timeout: The default timeout of a call, or ``None``.
        link_gone: Ends a link whose send found it gone.
    """

    def __init__(
        self,
        *,
        counters: Counters,
        invoke_timeout: float | None,
        link_gone: LinkGone,
    ) -> None:
        self._counters = counters
        self._invoke_timeout = invoke_timeout
        self._link_gone = link_gone
        self.deadlines = Deadlines()  # the timeouts of our calls
        #: The loop we run on, from ``start`` on: every later use takes it from here
        #: (``asyncio.get_running_loop`` is a ``getpid`` system call on Python 3.11).
        self._loop: asyncio.AbstractEventLoop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The Peer opened on ``loop``."""
        self._loop = loop

    def invoke(
        self,
        route: Route,
        method: str,
        body: Body,
        order_key: str | None,
        to: str | None,
        timeout: float | None,
        headers: Headers | None,
    ) -> Awaitable[Body]:
        """Check and build one call; return it to await (see ``Peer.invoke``).

        The arguments are checked at once; what is returned is the ``call`` coroutine itself,
        so that the hot path has no frame of its own here.

        Raises:
            The errors of ``prepare``.
        """
        if (
            timeout is None
            and headers is None
            and type(method) is str
            and method
            and (order_key is None or type(order_key) is str)
            and type(body) in _PLAIN_BODIES
        ):  # ``prepare``, written out for the common call: its checks hold by the types
            link, target = route(to)
            packed = pack_body(body)
            link.check_size(len(packed))
            call_id = link.session.start_call()
            timeout = self._invoke_timeout
            msg = m.Call(
                id=call_id,
                method=method,
                body=packed,
                order_key=order_key,
                timeout=timeout,
                target=target,
            )
            return self.call(link, msg)
        upload = body if isinstance(body, AsyncIterable) else None
        link, msg = self.prepare(
            route,
            to,
            method,
            None if upload is not None else body,
            order_key=order_key,
            timeout=timeout,
            headers=headers,
            upload=upload is not None,
        )
        return self.call(link, msg, upload)

    def prepare(
        self,
        route: Callable[[str | None], tuple[Link, str | None]],
        to: str | None,
        method: str,
        body: Body,
        *,
        order_key: str | None,
        timeout: float | None,
        headers: Headers | None,
        stream: bool = False,
        upload: bool = False,
    ) -> tuple[Link, m.Call]:
        """Check a call's arguments, pick its link, and build its ``Call`` (nothing is sent).

        Args:
            route: Finds the link that reaches ``to`` and the target to send with.
            to: The remote to call (see ``Peer.invoke``).
            method: As for ``Peer.invoke``.
            body: As for ``Peer.invoke``.
            order_key: As for ``Peer.invoke``.
            timeout: As for ``Peer.invoke``; ``None`` for the default.
            headers: As for ``Peer.invoke``.
            stream: Whether this is a stream call.
            upload: Whether the body is streamed.

        Returns:
            The link and the call.

        Raises:
            TypeError, ValueError: Misused arguments; ``body`` not msgpack-serializable.
            UnknownPeerError, PeerDisconnectedError: ``route`` found no link.
            MessageTooLargeError: ``body`` exceeds either side's ``max_body_size``.
        """
        call_timeout = self.check(method, order_key, timeout, headers)
        link, target = route(to)
        packed = pack_body(body)
        call = _build(
            link, target, method, packed, order_key, call_timeout, headers, stream, upload
        )
        return link, call

    def check(
        self, method: str, order_key: str | None, timeout: float | None, headers: Headers | None
    ) -> float | None:
        """Check a call's arguments; return its timeout (``invoke_timeout`` for ``None``).

        Raises:
            TypeError, ValueError: A misused argument (named).
        """
        call_timeout = check_timeout(
            "timeout", self._invoke_timeout if timeout is None else timeout
        )
        check_call_args(method, order_key, headers)
        return call_timeout

    async def call_all(
        self,
        route: Callable[[str | None], tuple[Link, str | None]],
        names: Iterable[str],
        method: str,
        body: Body,
        *,
        timeout: float | None,
        headers: Headers | None,
    ) -> dict[str, Any]:
        """Call ``method`` on each of ``names`` at once (see ``Peer.invoke_all``).

        The body is packed once and the same packed bytes go out on every link. A name that
        ``route`` cannot reach, or whose remote accepts no body this large, maps to the
        error at once; the others are called side by side, each with ``timeout``.

        Raises:
            TypeError, ValueError: Misused arguments; ``body`` not msgpack-serializable.
        """
        call_timeout = self.check(method, None, timeout, headers)
        packed = pack_body(body)
        results: dict[str, Any] = {}
        bulky: dict[str, asyncio.Task[Body]] = {}  # chunked: each waits for credit, in a task
        out: dict[str, tuple[Link, m.Call, asyncio.Future[m.Message]]] = {}
        started = rpc_started()
        try:
            for name in names:  # None keeps the order of ``names`` until the outcome
                results[name] = await self._start_one(
                    name, route, method, packed, call_timeout, headers, out, bulky
                )
            if out:
                await asyncio.wait([future for *_, future in out.values()], timeout=call_timeout)
            for name, (link, call, future) in out.items():
                results[name] = self._settle(link, call, future, started)
            if bulky:
                outcomes = await asyncio.gather(*bulky.values(), return_exceptions=True)
                results.update(zip(bulky, outcomes, strict=True))
        except BaseException:  # cancelled: every call still out is abandoned (Cancel sent)
            for link, call, future in out.values():
                if link.pending.pop(call.id, None) is not None and not future.done():
                    link.abandon(call.id)
            for task in bulky.values():
                task.cancel()
            raise
        return results

    async def _start_one(
        self,
        name: str,
        route: Callable[[str | None], tuple[Link, str | None]],
        method: str,
        packed: m.PackedBody,
        timeout: float | None,
        headers: Headers | None,
        out: dict[str, tuple[Link, m.Call, asyncio.Future[m.Message]]],
        bulky: dict[str, asyncio.Task[Body]],
    ) -> Exception | None:
        """Send the call of ``call_all`` to ``name``; the error if it could not leave."""
        try:
            link, target = route(name)
            call = _build(link, target, method, packed, None, timeout, headers)
        except (UnknownPeerError, PeerDisconnectedError, MessageTooLargeError) as exc:
            return exc
        if link.chunks(call):  # waits for the remote's credit: in a task of its own
            bulky[name] = self._loop.create_task(self.call(link, call))
            return None
        # A whole call needs no task: a future each, and one wait for them all.
        future: asyncio.Future[m.Message] = self._loop.create_future()
        link.pending[call.id] = future
        self._counters.calls_out += 1
        try:
            await self.send_call(link, call)
        except PeerDisconnectedError as exc:  # counted, and its link ended
            link.session.call_input(call.id, CallInput.REPLY)
            return exc
        out[name] = (link, call, future)
        return None

    def _settle(
        self, link: Link, call: m.Call, future: asyncio.Future[m.Message], started: float | None
    ) -> Any:
        """What one call of ``call_all`` came to: its value, or the error it raised."""
        link.pending.pop(call.id, None)
        result: Any
        if not future.done():  # the fan-out's timeout passed
            link.abandon(call.id)
            self._counters.count_error(RPCTimeoutError.__name__)
            result = RPCTimeoutError(f"{call.method!r} took longer than {call.timeout} s")
        elif (error := future.exception()) is not None:  # the link ended (counted there)
            result = error
        else:
            try:
                result = outcome(future.result())
            except Exception as exc:
                self._counters.count_error(type(exc).__name__)
                result = exc
        if started is not None:
            failed = type(result).__name__ if isinstance(result, Exception) else "ok"
            log_rpc("invoked", call.method, link.identity, started, failed)
        return result

    async def call(
        self, link: Link, msg: m.Call, upload: AsyncIterable[Body] | None = None
    ) -> Body:
        """Send ``msg`` (and its streamed body) and return its outcome (see ``Peer.invoke``).

        One coroutine from the send to the outcome: the send itself is ``Link.post``, which
        needs no coroutine for a call that goes whole and at once (the common case).
        """
        future: asyncio.Future[m.Message] = self._loop.create_future()
        link.pending[msg.id] = future
        self._counters.calls_out += 1
        started = rpc_started()
        timeout = msg.timeout
        expiry = deadline = None
        try:
            try:
                sending = link.post(msg)
                if sending is not None or upload is not None:
                    expiry, deadline = self._arm(future, timeout)
                    if sending is not None:
                        await sending
                elif timeout is not None:  # sent whole (the common case): ``_arm``, inline
                    deadline = self.deadlines.add(timeout, _time_out, future)
            except BaseException as exc:
                await self._unsent(link, msg, future, exc)
                raise
            reply = await (
                future if upload is None else self._upload_and_wait(link, msg.id, future, upload)
            )
        except asyncio.CancelledError:
            link.abandon(msg.id)
            if not self._timed_out(future, expiry, deadline is not None):
                self._counters.count_error("CancelledError")
                raise  # cancelled, not (only) timed out
            self._counters.count_error(RPCTimeoutError.__name__)
            raise RPCTimeoutError(f"{msg.method!r} took longer than {timeout} s") from None
        finally:
            if deadline is not None:
                self.deadlines.discard(deadline)
            link.pending.pop(msg.id, None)
            if started is not None:
                log_rpc("invoked", msg.method, link.identity, started, call_outcome(future))
        try:
            return outcome(reply)
        except Exception as exc:
            self._counters.count_error(type(exc).__name__)
            raise

    def _arm(
        self, future: asyncio.Future[m.Message], timeout: float | None
    ) -> tuple[_Expiry | None, Deadline | None]:
        """Start the timeout of a call still being sent, whose ``future`` waits for the reply.

        The timeout covers the rest of the send too (a chunked body may take a while to go
        out): it cancels this task, wherever it waits (``expiry``). A call sent whole at
        once (the common case) only waits for the reply: its timeout (armed in ``call``)
        cancels just that future, with no task to look up and no cancellation to undo.
        """
        if timeout is None:
            return None, None
        expiry = _Expiry(future, asyncio.current_task(self._loop))
        return expiry, self.deadlines.add(timeout, _expire, expiry)

    def _timed_out(
        self, future: asyncio.Future[m.Message], expiry: _Expiry | None, armed: bool
    ) -> bool:
        """Whether a ``CancelledError`` leaving ``call`` is its timeout's, and only that.

        The timeout cancelled either the task (``expiry``: it undoes that cancellation) or,
        for a call sent whole at once, only the future; a cancellation of the task itself
        (also cancelling the future it waits for) is the caller's.
        """
        if expiry is not None:
            return expiry.fired and not expiry.task.uncancel()  # type: ignore[union-attr]
        if not armed or not future.cancelled():
            return False
        task = asyncio.current_task(self._loop)
        return task is None or not task.cancelling()

    async def _unsent(
        self,
        link: Link,
        msg: m.Call,
        future: asyncio.Future[m.Message],
        error: BaseException,
    ) -> None:
        """The send of ``msg`` failed with ``error``: the call never left whole, forget it."""
        try:
            if isinstance(error, PeerDisconnectedError):
                await self._gone(link, msg, error)
        finally:
            link.session.call_input(msg.id, CallInput.REPLY)
            if future.done() and not future.cancelled():
                future.exception()  # the link failed it too; the send's error is the one raised

    async def send_call(self, link: Link, msg: m.Call) -> None:
        """Send a call; if its link turns out to be gone, end the link at once.

        The transport may know the connection is gone before its ``Disconnected`` event is
        handled. Ending the link now keeps ``peers`` and ``wait_for_peer`` truthful, so a
        caller that waits for the peer and retries does wait (for the reconnection) instead
        of failing again and again without ever yielding to the event loop.
        """
        try:
            sending = link.post(msg)
            if sending is not None:
                await sending
        except PeerDisconnectedError as exc:
            await self._gone(link, msg, exc)
            raise

    async def _gone(self, link: Link, msg: m.Call, error: PeerDisconnectedError) -> None:
        """The send of ``msg`` found its link gone: count the caller's error, end the link."""
        # The caller (invoke or stream) raises this error: count it, as for any error.
        waiting = link.pending.pop(msg.id, None) or link.streams.pop(msg.id, None)
        if waiting is not None:
            self._counters.count_error(type(error).__name__)
        await self._link_gone(link, error)

    async def _upload_and_wait(
        self,
        link: Link,
        call_id: int,
        future: asyncio.Future[m.Message],
        upload: AsyncIterable[Body],
    ) -> m.Message:
        """Stream ``upload`` as the body of call ``call_id`` until it ends or a reply comes."""
        link.uploads[call_id] = CreditWindow(UPLOAD_WINDOW)
        pump = asyncio.ensure_future(self._pump_upload(link, call_id, upload))
        try:
            await asyncio.wait((future, pump), return_when=asyncio.FIRST_COMPLETED)
            if not future.done() and (error := pump.exception()) is not None:
                link.abandon(call_id)  # our iterator failed: stop the handler
                raise error
            return await future  # the handler may answer before it read everything
        finally:
            link.uploads.pop(call_id, None)
            if not pump.done():
                pump.cancel()
            # Let it stop, but not by swallowing a cancellation of our own caller.
            await asyncio.wait((pump,))
            if not pump.cancelled():
                pump.exception()  # retrieved: raised above, or moot once the reply came

    async def _pump_upload(self, link: Link, call_id: int, items: AsyncIterable[Body]) -> None:
        window = link.uploads[call_id]
        async for item in items:
            packed = pack_body(item)
            link.check_size(len(packed))
            await window.take()
            await link.send(m.UploadItem(id=call_id, body=packed))
        await link.send(m.UploadEnd(id=call_id))

    async def stream(
        self,
        route: Callable[[str | None], tuple[Link, str | None]],
        to: str | None,
        method: str,
        body: Body,
        *,
        order_key: str | None,
        timeout: float | None,
        headers: Headers | None,
    ) -> AsyncIterator[Body]:
        """Make a stream call and yield its items (see ``Peer.stream``).

        The arguments are those of ``prepare``, checked when the iteration starts.
        """
        link, msg = self.prepare(
            route,
            to,
            method,
            body,
            order_key=order_key,
            timeout=timeout,
            headers=headers,
            stream=True,
        )
        call_id, call_timeout = msg.id, msg.timeout
        inbox = StreamInbox(m.STREAM_WINDOW)
        link.streams[call_id] = inbox
        self._counters.calls_out += 1
        deadline = None if call_timeout is None else self._loop.time() + call_timeout
        finished = False
        try:
            await self.send_call(link, msg)
            while True:
                reply = await self._next_item(inbox, deadline, msg.method)
                if type(reply) is m.StreamEnd:
                    finished = True
                    return
                if type(reply) is not m.StreamItem:
                    finished = True
                    outcome(reply)  # raises the remote's error
                    raise RPCInternalError(f"{type(reply).__name__} in a stream")
                yield unpack_body(reply.body)
                if inbox.consumed():
                    link.send_in_background(inbox.credit_message(call_id))
        finally:
            link.streams.pop(call_id, None)
            if not finished:
                link.abandon(call_id)

    async def _next_item(
        self, inbox: StreamInbox, deadline: float | None, method: str
    ) -> m.Message:
        try:
            async with asyncio.timeout_at(deadline) as scope:
                return await inbox.get()
        except TimeoutError:
            if not scope.expired():
                raise
            self._counters.count_error(RPCTimeoutError.__name__)
            raise RPCTimeoutError(f"stream {method!r} passed its timeout") from None


def _build(
    link: Link,
    target: str | None,
    method: str,
    packed: m.PackedBody,
    order_key: str | None,
    timeout: float | None,
    headers: Headers | None,
    stream: bool = False,
    upload: bool = False,
) -> m.Call:
    """The ``Call`` for ``link``, with a new call id of its session (nothing is sent).

    Raises:
        MessageTooLargeError: ``packed`` exceeds either side's ``max_body_size``.
    """
    link.check_size(len(packed))
    return m.Call(
        id=link.session.start_call(),
        method=method,
        body=packed,
        order_key=order_key,
        headers=dict(headers) if headers else None,
        timeout=timeout,
        stream=stream,
        upload=upload,
        target=target,
    )


class _Expiry:
    """What the timeout of one call cancels: the task that sends it and waits for the reply."""

    __slots__ = ("fired", "future", "task")

    def __init__(self, future: asyncio.Future[m.Message], task: asyncio.Task[Any] | None) -> None:
        self.future = future
        self.task = task
        self.fired = False


def _expire(expiry: _Expiry) -> None:
    """A call's timeout passed: cancel its task, unless the reply is already there."""
    if not expiry.future.done() and expiry.task is not None:
        expiry.fired = True
        expiry.task.cancel()


def _time_out(future: asyncio.Future[m.Message]) -> None:
    """The timeout of a call sent whole passed: stop its wait, unless the reply is there."""
    future.cancel()  # nothing, once done
