"""The soak test behind ``python -m callosum_like soak`` (and ``make soak``).

Theory of operation: ``run_soak`` starts one *server* process per transport
(``python -m callosum_like soak-server``) at a port it chose, then drives it from this process
for ``--duration`` seconds:

1. *Flood*: ``--flood`` calls (100,000 by default) at a slow method, ``FLOOD_WINDOW`` at a
   time, against the server's small ``max_pending``: most are refused with
   ``OverloadedError`` (expected, counted apart) and the server's resident memory is
   sampled before, during and after.
2. *Mixed load*: ``--clients`` long-lived clients per transport call in a loop: echoes small
   and large, a call the server answers by calling the client back, a stream, a call whose
   handler raises (an ``RPCUserError`` is the right answer there). One *churn* loop per
   transport opens a short-lived client, makes a round trip both ways and closes it.
3. *Kills*: every ``--kill-interval`` seconds (transports staggered by half of it) the server
   is killed with SIGKILL and restarted at the same port after ``DOWN_TIME``. Clients
   reconnect by themselves.

Every failure is counted by its exception class. ``PeerDisconnectedError`` is acceptable
from the kill until ``GRACE`` seconds after the new server is ready (a caller whose call was
in flight, or who called while the link was down); anything else, or that error outside a
kill window, fails the soak. At the end the report gives the calls made by kind, failures by
kind, the kills, and the resident memory (``VmRSS``) of this process at start and end and of
each server life. The exit status is 0 when the soak passed.

The modules: ``server`` is the killed and restarted server process (``soak-server``),
``tally`` the bookkeeping of calls, failures and kill windows, ``load`` one transport's server
and clients and the load they make, ``churn`` the churn soak (``--churn``), ``network`` the
network soak (``--network``: link flaps in a network test bed instead of kills, with
resumption on, and nothing may fail), ``cli`` the command, the whole run and its report. Only
``__main__`` imports ``cli`` and ``server``.
"""

__all__: list[str] = []
