"""The bed's plan on paper, and its refusals (no root needed).

Names must tell a bed's owner apart from a later process with the same pid; host names and
knob values outside the documented ranges are refused with the argument's name; addresses
stay inside 10.77.0.0/16, one /24 per host.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from callosum_like.tools.netbed import commands, plan
from callosum_like.tools.netbed.bed import NetBed
from callosum_like.tools.netbed.forwarder import MAX_DELAY_MS, parse_delay

pytestmark = pytest.mark.timeout(10)


def fake_proc(root: Path, pid: int, start: int, command: str = "python3") -> Path:
    fields = ["S", *map(str, range(4, 22)), str(start), "0"]  # fields 3 .. 23
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({command}) {' '.join(fields)}\n")
    return root


def test_a_namespace_name_tells_its_bed_and_role() -> None:
    name = plan.BedName(pid=4321, start=987654, token="0a1b")
    assert name.namespace("router") == "clnb-4321-987654-0a1b-router"
    assert plan.BedName.parse("clnb-4321-987654-0a1b-b2") == (name, "b2")
    for other in ("clnb-x-1-0a-a", "fedm-4321", "clnb-1-2-0a1b", "clnb-1-2-zz-a"):
        assert plan.BedName.parse(other) is None


def test_the_owner_is_alive_only_if_the_same_process_still_runs(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4321, 987654, command="odd ) name")
    assert plan.owner_alive(plan.BedName(pid=4321, start=987654, token="aa"), proc)
    assert not plan.owner_alive(plan.BedName(pid=4321, start=5, token="aa"), proc)  # pid reused
    assert not plan.owner_alive(plan.BedName(pid=4322, start=987654, token="aa"), proc)  # gone
    assert plan.process_start(os.getpid()) is not None  # the real /proc reads too


@pytest.mark.parametrize(
    ("hosts", "words"),
    [
        (("a",), "2 to"),
        (("a", "a"), "distinct"),
        (("a", "B"), "lowercase"),
        (("a", "1b"), "starting with a letter"),
        (("a", "router"), "router"),
        (("a", "ninechars"), "1-8"),
    ],
)
def test_bad_host_names_are_refused(hosts: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        NetBed(hosts)


def test_each_host_has_its_own_subnet_with_the_router_first() -> None:
    network = ipaddress.IPv4Network("10.77.0.0/16")
    assert [plan.gateway(n) for n in (1, 2, 3)] == ["10.77.1.1", "10.77.2.1", "10.77.3.1"]
    assert [plan.host_address(2, g) for g in (0, 1, 2)] == ["10.77.2.2", "10.77.2.3", "10.77.2.4"]
    assert ipaddress.IPv4Address(plan.host_address(plan.MAX_HOSTS, 251)) in network
    with pytest.raises(ValueError, match="no address left"):
        plan.host_address(1, 252)


def test_loss_is_a_random_drop_at_an_ingress_in_steps_of_a_hundredth_percent() -> None:
    script = plan.loss_ruleset("b", "eth0", 12.34)
    assert 'hook ingress device "eth0"' in script
    assert "numgen random mod 10000 < 1234 counter drop" in script
    assert script.startswith("table netdev netbed_loss_b\ndelete table netdev netbed_loss_b\n")
    assert plan.loss_ruleset("b", "eth0", 0).count("{") == 0  # 0 %: the table is only removed


def test_the_token_bucket_holds_ten_milliseconds_and_at_least_sixteen_kilobytes() -> None:
    assert plan.tbf_arguments(8_000_000)[:6] == [
        "root",
        "tbf",
        "rate",
        "8000000bit",
        "burst",
        "16000",
    ]
    assert plan.tbf_arguments(80_000_000)[5] == "100000"


def test_only_new_tcp_connections_and_udp_between_hosts_are_diverted() -> None:
    script = plan.divert_ruleset(4001, 4002)
    assert 'iifname != "to-*" accept' in script
    assert "fib daddr type local accept" in script
    assert "tcp flags & (syn | ack) == syn tproxy to :4001" in script
    assert "meta l4proto udp tproxy to :4002" in script


@pytest.mark.asyncio
async def test_knob_values_out_of_range_are_refused_before_anything_runs() -> None:
    bed = NetBed(("a", "b"))  # never entered: nothing may be run for a refused value
    with pytest.raises(ValueError, match="percent"):
        await bed.loss("a", 101)
    with pytest.raises(ValueError, match="direction"):
        await bed.loss("a", 1, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits_per_second"):
        await bed.bandwidth("a", 100)
    with pytest.raises(ValueError, match="host"):
        await bed.down("c")
    with pytest.raises(ValueError, match="delay"):
        await bed.delay(MAX_DELAY_MS + 1)
    with pytest.raises(ValueError, match="forwarder_buffer_size"):
        NetBed(forwarder_buffer_size=0)
    assert parse_delay("12.5") == 12.5


def test_without_root_a_bed_says_why_it_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = commands.unavailable_reason()
    assert reason is not None
    assert "root" in reason
