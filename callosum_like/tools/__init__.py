"""The project's tooling: the demo, the benchmark and the soak, with their child processes.

Theory of operation: everything here runs the library as a user would, in separate processes
on 127.0.0.1, and sits above the library: ``__main__`` imports these modules, they import the
library, and nothing in the library imports them (``setup.cfg``'s import-linter contracts say
so). Inside, the layers are:

* ``demo``, ``soak`` and ``bench`` (a package): the three commands, independent of each other;
  ``demo_typed`` is the demo's Thrift and schema section.
* ``flaps`` (a package, below the commands and above ``netbed``): managers, relays and
  agents in the bed's hosts under a mixed load while their links flap, steered over a Unix
  socket, with books that tell a failed, repeated or missing call (``make resume-figures``,
  ``soak --network`` and ``tests/net/test_resume_netns.py``).
* ``netbed`` (a package, beside ``demo_typed``): the network fault test bed, hosts in network
  namespaces with loss, bandwidth, delay, flaps and readdressing (``docs/netbed.md``); the
  commands and the tests may run their children in it instead of on 127.0.0.1.
* ``fleet``: many connecting peers in one process (``fleet-agents``), the agents of the
  benchmark's W6/W7 and of the churn soak, and the limit on open files they need.
* ``supervisor``: the parent's side of a child process (``ChildProcess``: start, read its
  ``READY``/``RESULT`` lines, relay or keep its output, stop it in bounded steps) and the one
  set of timeouts that goes with it.
* ``child``: the child's side (bind on loopback, announce ``READY``, stop at stdin's
  end-of-file, leave Ctrl-C to the parent, run on uvloop when asked).

This package re-exports nothing: import from the defining module.
"""

__all__: list[str] = []
