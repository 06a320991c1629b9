"""Which identity a client certificate proves (lower/certificates.py), without sockets."""

from __future__ import annotations

import logging

import pytest
import trustme
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

from callosum_like.lower.certificates import (
    PeerCertificate,
    check_identity_hook,
    common_name,
    identify,
)

from ..certs import session_ca


def der(*identities: str, common_name: str | None = None) -> bytes:
    cert = session_ca().issue_cert(*identities, common_name=common_name)
    pem = cert.cert_chain_pems[0].bytes()
    return load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_the_subject_common_name_names_the_holder() -> None:
    certificate = PeerCertificate(der("agent-7.example", common_name="agent-7"))
    assert certificate.subject_common_name == "agent-7"
    assert common_name(certificate) == "agent-7"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("agent-8.example",), "agent-8.example"),
        (("agent-9@example.test",), "agent-9@example.test"),
    ],
)
def test_without_a_cn_the_first_dns_or_email_alternative_name_does(
    names: tuple[str, ...], expected: str
) -> None:
    certificate = PeerCertificate(der(*names))
    assert certificate.subject_common_name is None
    assert common_name(certificate) == expected


def test_a_certificate_that_names_nobody_is_refused() -> None:
    assert common_name(PeerCertificate(der("127.0.0.1"))) is None  # an IP address only


def test_a_failing_or_wrong_hook_refuses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cert = der("x.example", common_name="x")

    def broken(certificate: PeerCertificate) -> str | None:
        raise RuntimeError("bug in the hook")

    assert identify(broken, cert) is None
    assert "identity hook failed" in caplog.text
    assert identify(lambda c: "", cert) is None
    assert identify(lambda c: 42, cert) is None  # type: ignore[arg-type,return-value]
    assert identify(common_name, None) is None  # no certificate
    assert identify(common_name, cert) == "x"


def test_the_hook_option_is_checked() -> None:
    assert check_identity_hook(None) is common_name
    with pytest.raises(TypeError, match="identity_from_certificate"):
        check_identity_hook("cn")


def test_a_certificate_of_another_ca_still_parses() -> None:  # verification is the TLS's job
    other = trustme.CA().issue_cert("y.example", common_name="y")
    pem = other.cert_chain_pems[0].bytes()
    data = load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert common_name(PeerCertificate(data)) == "y"
