"""A network fault test bed: hosts in Linux network namespaces around a router, with knobs.

Theory of operation: ``bed.NetBed`` builds two or more hosts, each a network namespace joined
to a router namespace by a veth pair, and turns the knobs the tests, the benchmark and the
soak need to see a bad network: packet loss (nftables), bandwidth (``tbf``), one-way delay
(the userspace ``forwarder``: this kernel has no ``netem``), a link going down and up, and a
host changing its address. ``docs/netbed.md`` is the user's guide. It needs root, ``ip``,
``tc`` and ``nft`` (``make install`` installs the last two as root).

The modules, from the bottom: ``plan`` (names, addresses and rulesets, no I/O), ``delayline``
(the forwarder's bounded FIFO of due items), ``tcp_relay`` and ``udp_relay`` (the forwarder's
two halves), ``forwarder`` (the process run in the router), ``commands`` (running ``ip``,
``tc`` and ``nft``; removing namespaces, stale ones included), ``bed`` (``NetBed``), and
``probe`` (small measuring programs run inside the hosts).

This package re-exports nothing: import from the defining module.
"""

__all__: list[str] = []
