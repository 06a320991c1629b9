"""Session resumption under link flaps: a mixed load between processes in a network test bed.

Theory of operation: managers, relays and agents run as child processes (``node``) in the
hosts of a ``netbed.NetBed``, with resumable peers and relays (``resume_timeout``), and call
each other with a mixed load (``load``: small calls, large bodies, streams, both ways). This
process cannot reach the bed's addresses; it steers its nodes through a *conductor*, a Peer
on a Unix socket (``stage``), and turns the bed's knobs meanwhile: link flaps, loss, delay
(``scenarios``). Every operation has an id; the handlers count their runs by id and the
receivers of streams check their items (``books``), so that a run ends with a verdict: calls
failed, handlers run twice or never, stream items lost, repeated or out of order.

The tests (``tests/net/test_resume_netns.py``), ``figures`` (``make resume-figures``: the
figures of docs/reliability.md, "Resumption") and the soak's network mode (``soak
--network``) use it. Above ``netbed``, below the commands.

This package re-exports nothing: import from the defining module.
"""

__all__: list[str] = []
