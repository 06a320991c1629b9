"""The public surface is declared once (``callosum_like.__all__``) and matches the contract."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import callosum_like as cl
from callosum_like import auth

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md"

#: Names the contract fixes (``cl.X`` in shared/CONTRACT.md), plus the module ``auth``.
CONTRACT_NAMES = {
    "Peer", "Request", "Ordering", "ZeroMQAddress", "TCPAddress", "UnixAddress",
    "ZeroMQTransport", "TCPTransport", "RPCError", "RemoteError", "RPCUserError",
    "MethodNotFoundError", "RPCInternalError", "RPCCancelledError", "PeerDisconnectedError",
    "PeerClosedError", "MessageTooLargeError", "AuthenticationError", "UnknownPeerError",
    "SchemaError", "auth", "NATSAddress", "NATSTransport", "QUICAddress", "QUICTransport",
}  # fmt: skip
#: What we add beyond the contract, deliberately.
EXTRA_NAMES = {
    "PeerStatistics",
    "Transport",
    "OverloadedError",
    "RPCTimeoutError",
    "PeerEvent",
    "PeerEventKind",
    "PeerEvents",
    "Relay",
    "UnixTransport",  # the stream transport's options (TLS, reconnection) for cl.UnixAddress
    "Interceptor",  # the base class of Peer(interceptors=[...]) (docs/observability.md)
    "OutgoingCall",
    "ForwardedCall",  # what a relay's interceptors see of a call it passes on
    "RefusedError",  # an interceptor of the callee refused the call
    "InterceptorError",  # an interceptor of ours failed on a call
}


def test_all_is_the_contract_plus_documented_extras() -> None:
    assert set(cl.__all__) == CONTRACT_NAMES | EXTRA_NAMES
    assert len(cl.__all__) == len(set(cl.__all__))


#: Names the contract's "Additions" section fixes for issues still open, by issue number. A
#: name leaves this table in the commit that adds it to ``cl.__all__`` (the test below fails
#: while both hold), so the table always says exactly what is still to come.
AWAITED_NAMES: dict[str, int] = {}


def contract_text() -> str:
    if not CONTRACT.exists():  # the contract lives beside the repository, in shared/
        pytest.skip(f"no contract file at {CONTRACT} (CI and a developer checkout have one)")
    return CONTRACT.read_text()


def test_contract_file_names_nothing_we_lack() -> None:
    mentioned = set(re.findall(r"\bcl\.([A-Z][A-Za-z]+)", contract_text()))
    assert mentioned - AWAITED_NAMES.keys() <= set(cl.__all__)
    assert AWAITED_NAMES.keys() <= mentioned  # awaited by the contract, not made up here


def test_awaited_names_are_not_there_yet() -> None:
    landed = AWAITED_NAMES.keys() & set(cl.__all__)
    assert not landed, f"landed: take {sorted(landed)} out of AWAITED_NAMES"


def test_public_classes_claim_the_package_as_their_module() -> None:
    for name in cl.__all__:
        obj = getattr(cl, name)
        if isinstance(obj, type):
            assert obj.__module__ == "callosum_like", name


def test_errors_are_rooted_as_the_contract_says() -> None:
    for name in cl.__all__:
        obj = getattr(cl, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, cl.RPCError), name
    for remote in (cl.RPCUserError, cl.MethodNotFoundError, cl.RPCInternalError):
        assert issubclass(remote, cl.RemoteError)
    assert issubclass(cl.RPCTimeoutError, TimeoutError)


def test_auth_exposes_the_contract_names() -> None:
    for name in (
        "Keypair", "generate_keypair", "load_keypair", "ServerAuthenticator",
        "ClientAuthenticator", "AbstractServerAuthenticator", "AbstractClientAuthenticator",
        "Identity", "Credential", "AuthResult",
    ):  # fmt: skip
        assert name in auth.__all__, name


def test_every_module_declares_all() -> None:
    for info in pkgutil.walk_packages(cl.__path__, prefix="callosum_like."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), info.name


def test_importing_the_package_does_not_import_thriftpy2() -> None:
    import subprocess
    import sys

    code = "import sys, callosum_like; assert 'thriftpy2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
