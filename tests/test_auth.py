"""Keys, certificate files, authenticators and the sans-IO half of ZAP (no sockets)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85

from callosum_like import auth
from callosum_like.errors import ProtocolError
from callosum_like.lower import zap_protocol

pytestmark = pytest.mark.timeout(30)


# --- Keypair -------------------------------------------------------------------------------


def test_generate_keypair_gives_matching_z85_keys() -> None:
    keys = auth.generate_keypair()
    assert len(keys.public) == len(keys.secret) == 40
    assert zmq.curve_public(keys.secret) == keys.public
    assert keys != auth.generate_keypair()


def test_keypair_repr_hides_the_secret() -> None:
    keys = auth.generate_keypair()
    assert keys.secret.decode() not in repr(keys)
    assert keys.public.decode() in repr(keys)
    identity = auth.Identity("d", keys.secret)
    assert keys.secret.decode() not in repr(identity)


def test_keypair_is_frozen() -> None:
    keys = auth.generate_keypair()
    with pytest.raises(AttributeError):
        keys.public = b"x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("public", "secret", "message"),
    [
        (b"short", None, "40 bytes"),
        (b"~" * 40, None, "Z85 alphabet"),
        (b"#" * 40, None, "not a valid Z85"),
        (None, b"x" * 39, "40 bytes"),
    ],
)
def test_keypair_rejects_bad_keys(public: bytes | None, secret: bytes | None, message: str) -> None:
    good = auth.generate_keypair()
    with pytest.raises(ValueError, match=message):
        auth.Keypair(public or good.public, secret or good.secret)


def test_keypair_rejects_keys_of_two_pairs() -> None:
    one, two = auth.generate_keypair(), auth.generate_keypair()
    with pytest.raises(ValueError, match="does not belong"):
        auth.Keypair(one.public, two.secret)


def test_keypair_rejects_str_keys() -> None:
    keys = auth.generate_keypair()
    with pytest.raises(TypeError, match="public"):
        auth.Keypair(keys.public.decode(), keys.secret)  # type: ignore[arg-type]


# --- certificate files ---------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    keys = auth.generate_keypair()
    public_path, secret_path = auth.save_keypair(keys, tmp_path / "server")
    assert public_path == tmp_path / "server.key"
    assert secret_path == tmp_path / "server.key_secret"
    assert auth.load_keypair(tmp_path / "server") == keys
    assert auth.load_keypair(str(secret_path)) == keys
    assert auth.load_public_key(tmp_path / "server") == keys.public
    assert auth.load_public_key(public_path) == keys.public
    assert auth.load_public_key(secret_path) == keys.public


def test_public_file_has_no_secret(tmp_path: Path) -> None:
    keys = auth.generate_keypair()
    public_path, secret_path = auth.save_keypair(keys, tmp_path / "k")
    assert keys.secret not in public_path.read_bytes()
    assert "secret-key" not in public_path.read_text()
    assert keys.secret in secret_path.read_bytes()


def test_secret_file_mode_is_0600(tmp_path: Path) -> None:
    public_path, secret_path = auth.save_keypair(auth.generate_keypair(), tmp_path / "k")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.key_secret"]


def test_secret_file_is_never_created_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watch every chmod: the secret file must not pass through a wider mode."""
    modes: list[int] = []
    real_fchmod = os.fchmod

    def spy(fd: int, mode: int) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", spy)
    auth.save_keypair(auth.generate_keypair(), tmp_path / "k")
    assert modes == [0o600, 0o600]  # both temporaries start private, only the public widens


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    first, second = auth.generate_keypair(), auth.generate_keypair()
    auth.save_keypair(first, tmp_path / "k")
    with pytest.raises(FileExistsError) as info:
        auth.save_keypair(second, tmp_path / "k")
    assert info.value.filename is not None
    assert auth.load_keypair(tmp_path / "k") == first
    auth.save_keypair(second, tmp_path / "k", overwrite=True)
    assert auth.load_keypair(tmp_path / "k") == second


def test_save_rejects_non_keypair(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="keypair"):
        auth.save_keypair((b"a", b"b"), tmp_path / "k")  # type: ignore[arg-type]


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        auth.load_keypair(tmp_path / "nope")
    assert info.value.filename == str(tmp_path / "nope.key_secret")
    assert "nope.key_secret" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"nope\.key'"):
        auth.load_public_key(tmp_path / "nope")


def test_load_keypair_from_public_file_only_is_missing(tmp_path: Path) -> None:
    _, secret_path = auth.save_keypair(auth.generate_keypair(), tmp_path / "k")
    secret_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"k\.key_secret"):
        auth.load_keypair(tmp_path / "k")


def _write_secret(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bad.key_secret"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'public-key'"),
        ("metadata\ncurve\n", "no 'public-key'"),
        ('curve\n    public-key = "{public}"\n', "no 'secret-key'"),
        ('curve\n  public-key = "{public}"\n', ":2: indent"),
        ('curve\n\tpublic-key = "{public}"\n', ":2: indent"),
        ('curve\n        public-key = "{public}"\n', ":2: indented deeper"),
        ('curve\n    public-key "{public}"\n', ":2: not a ZPL"),
        ('curve\n    public-key = "{public}\n', ":2: not a ZPL"),
        ('curve\n    public-key = "abc"\n    secret-key = "{secret}"\n', "40 bytes"),
        ('curve\n    public-key = "{other}"\n    secret-key = "{secret}"\n', "does not belong"),
        (b"\xff\xfe garbage", "not UTF-8"),
        ('curve\n    public-key = "{public}"\n    secret-key = "{secret}"\n' * 3000, "over"),
    ],
)
def test_load_malformed_file_names_it(tmp_path: Path, text: str | bytes, message: str) -> None:
    keys, other = auth.generate_keypair(), auth.generate_keypair()
    if isinstance(text, str):
        text = text.format(
            public=keys.public.decode(), secret=keys.secret.decode(), other=other.public.decode()
        )
    path = _write_secret(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        auth.load_keypair(path)
    assert str(path) in str(info.value)


def test_load_accepts_czmq_style_certificate(tmp_path: Path) -> None:
    """Unquoted and single-quoted values, metadata entries and trailing comments parse."""
    keys = auth.generate_keypair()
    text = (
        "#   ****  Generated on 2024-01-01 by czmq  ****\n"
        "\n"
        "metadata\n"
        '    name = "agent-1"   # who this is\n'
        "    email = ops@example.com\n"
        "curve\n"
        f"    public-key = {keys.public.decode()}\n"
        f"    secret-key = '{keys.secret.decode()}'  # keep safe\n"
    )
    assert auth.load_keypair(_write_secret(tmp_path, text)) == keys


def test_load_reads_pyzmq_certificates(tmp_path: Path) -> None:
    """Interoperability: files written by pyzmq's zmq.auth load with our parser."""
    from zmq.auth import create_certificates

    public_file, secret_file = create_certificates(str(tmp_path), "pyzmq")
    keys = auth.load_keypair(secret_file)
    assert auth.load_public_key(public_file) == keys.public


def test_pyzmq_reads_our_certificates(tmp_path: Path) -> None:
    from zmq.auth import load_certificate

    keys = auth.generate_keypair()
    public_path, secret_path = auth.save_keypair(keys, tmp_path / "k")
    assert load_certificate(secret_path) == (keys.public, keys.secret)
    assert load_certificate(public_path) == (keys.public, None)


def test_load_warns_about_exposed_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, secret_path = auth.save_keypair(auth.generate_keypair(), tmp_path / "k")
    secret_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="callosum_like.keys"):
        auth.load_keypair(secret_path)
    assert "chmod 600" in caplog.text


# --- value objects -------------------------------------------------------------------------


def test_identity_validates() -> None:
    keys = auth.generate_keypair()
    assert auth.Identity("d", keys.secret).domain == "d"
    with pytest.raises(ValueError, match="domain"):
        auth.Identity("", keys.secret)
    with pytest.raises(ValueError, match="private_key"):
        auth.Identity("d", b"x")


def test_auth_result_defaults() -> None:
    assert auth.AuthResult(False) == auth.AuthResult(success=False, user_id=None)
    with pytest.raises(TypeError, match="user_id"):
        auth.AuthResult(True, b"bytes")  # type: ignore[arg-type]


# --- authenticators ------------------------------------------------------------------------


def _credential(public_key: bytes, domain: str = auth.DEFAULT_DOMAIN) -> auth.Credential:
    return auth.Credential(domain, public_key)


@pytest.mark.asyncio
async def test_server_authenticator_allow_list() -> None:
    server, alice, bob = (auth.generate_keypair() for _ in range(3))
    authenticator = auth.ServerAuthenticator(server, allowed={alice.public: "alice"})
    assert await authenticator.check_client(_credential(alice.public)) == auth.AuthResult(
        True, "alice"
    )
    assert await authenticator.check_client(_credential(bob.public)) == auth.AuthResult(False)
    identity = await authenticator.server_identity()
    assert identity == auth.Identity("callosum", server.secret)
    assert await authenticator.server_public_key() == server.public


@pytest.mark.asyncio
async def test_server_authenticator_accepts_str_keys() -> None:
    server, alice = auth.generate_keypair(), auth.generate_keypair()
    authenticator = auth.ServerAuthenticator(server, allowed={alice.public.decode(): "alice"})
    assert authenticator.allowed == {alice.public: "alice"}
    assert (await authenticator.check_client(_credential(alice.public))).success


@pytest.mark.asyncio
async def test_server_authenticator_allow_and_revoke() -> None:
    server, alice = auth.generate_keypair(), auth.generate_keypair()
    authenticator = auth.ServerAuthenticator(server, allowed={})
    assert not (await authenticator.check_client(_credential(alice.public))).success
    authenticator.allow(alice.public, "alice")
    assert (await authenticator.check_client(_credential(alice.public))).user_id == "alice"
    authenticator.revoke(alice.public)
    authenticator.revoke(alice.public)  # idempotent
    assert not (await authenticator.check_client(_credential(alice.public))).success
    authenticator.allow(alice.public, "alice-2")
    assert (await authenticator.check_client(_credential(alice.public))).user_id == "alice-2"


@pytest.mark.asyncio
async def test_server_authenticator_callable() -> None:
    server, alice, bob = (auth.generate_keypair() for _ in range(3))
    seen: list[auth.Credential] = []

    async def check(credential: auth.Credential) -> auth.AuthResult:
        seen.append(credential)
        return auth.AuthResult(credential.public_key == alice.public, "from-callable")

    authenticator = auth.ServerAuthenticator(server, check, domain="tenant")
    assert await authenticator.check_client(_credential(alice.public, "tenant")) == (
        auth.AuthResult(True, "from-callable")
    )
    assert not (await authenticator.check_client(_credential(bob.public, "tenant"))).success
    assert seen == [_credential(alice.public, "tenant"), _credential(bob.public, "tenant")]
    # allow() entries take precedence over the callable; revoke() overrides it.
    authenticator.allow(bob.public, "bob")
    assert (await authenticator.check_client(_credential(bob.public))).user_id == "bob"
    authenticator.revoke(alice.public)
    assert not (await authenticator.check_client(_credential(alice.public))).success


@pytest.mark.parametrize(
    ("allowed", "error", "message"),
    [
        ({b"short": "x"}, ValueError, "public_key"),
        ({"é" * 40: "x"}, ValueError, "Z85"),
        (["not", "a", "mapping"], TypeError, "allowed"),
        (None, TypeError, "allowed"),
    ],
)
def test_server_authenticator_rejects_bad_allowed(
    allowed: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        auth.ServerAuthenticator(auth.generate_keypair(), allowed)  # type: ignore[arg-type]


def test_server_authenticator_rejects_bad_arguments() -> None:
    keys = auth.generate_keypair()
    with pytest.raises(TypeError, match="keypair"):
        auth.ServerAuthenticator(keys.public, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_id"):
        auth.ServerAuthenticator(keys, {keys.public: ""})
    with pytest.raises(ValueError, match="domain"):
        auth.ServerAuthenticator(keys, {}, domain="")


@pytest.mark.asyncio
async def test_client_authenticator() -> None:
    server, client = auth.generate_keypair(), auth.generate_keypair()
    authenticator = auth.ClientAuthenticator(client, server_public_key=server.public.decode())
    assert await authenticator.server_public_key() == server.public
    assert await authenticator.client_public_key() == client.public
    assert await authenticator.client_identity() == auth.Identity("callosum", client.secret)
    with pytest.raises(ValueError, match="server_public_key"):
        auth.ClientAuthenticator(client, server_public_key=b"nope")


def test_abstract_authenticators_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        auth.AbstractServerAuthenticator()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        auth.AbstractClientAuthenticator()  # type: ignore[abstract]


# --- ZAP, sans-IO --------------------------------------------------------------------------

RAW_KEY = bytes(range(32))


def _request(
    *, mechanism: bytes = b"CURVE", credentials: tuple[bytes, ...] = (RAW_KEY,)
) -> list[bytes]:
    return [b"1.0", b"7", b"dom#1", b"127.0.0.1", b"rid", mechanism, *credentials]


def test_parse_request() -> None:
    request = zap_protocol.parse_request(_request())
    assert request == zap_protocol.ZAPRequest(
        request_id=b"7",
        domain="dom#1",
        address="127.0.0.1",
        routing_id=b"rid",
        mechanism="CURVE",
        credentials=(RAW_KEY,),
    )
    assert request.curve_public_key == z85.encode(RAW_KEY)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "0 frames"),
        ([b"1.0", b"1", b"d", b"a", b"i"], "5 frames"),
        ([b"2.0", b"1", b"d", b"a", b"i", b"CURVE", RAW_KEY], "version"),
        ([b"1.0", b"1", b"\xff", b"a", b"i", b"CURVE", RAW_KEY], "domain is not UTF-8"),
        ([b"1.0", b"1", b"d", b"a", b"i", "CURVE", RAW_KEY], "bytes"),
    ],
)
def test_parse_request_rejects_malformed(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        zap_protocol.parse_request(frames)


def test_screen_passes_curve_request() -> None:
    assert isinstance(zap_protocol.screen_request(_request()), zap_protocol.ZAPRequest)


@pytest.mark.parametrize("mechanism", [b"NULL", b"PLAIN", b"GSSAPI", b"WHATEVER"])
def test_screen_refuses_other_mechanisms_with_400(mechanism: bytes) -> None:
    reply = zap_protocol.screen_request(_request(mechanism=mechanism, credentials=(b"user", b"pw")))
    assert isinstance(reply, zap_protocol.ZAPReply)
    assert reply.status is zap_protocol.ZAPStatus.FAILURE
    assert reply.request_id == b"7"


@pytest.mark.parametrize(
    "frames",
    [
        _request(credentials=()),
        _request(credentials=(RAW_KEY, RAW_KEY)),
        _request(credentials=(RAW_KEY[:31],)),
        [b"1.0", b"9"],
        [b"0.9", b"9", b"d", b"a", b"i", b"CURVE", RAW_KEY],
    ],
)
def test_screen_answers_malformed_with_500(frames: list[bytes]) -> None:
    reply = zap_protocol.screen_request(frames)
    assert isinstance(reply, zap_protocol.ZAPReply)
    assert reply.status is zap_protocol.ZAPStatus.INTERNAL_ERROR
    assert reply.request_id == (frames[1] if len(frames) > 1 else b"")


def test_screen_of_nothing_gives_500_with_empty_id() -> None:
    reply = zap_protocol.screen_request([])
    assert isinstance(reply, zap_protocol.ZAPReply)
    assert reply.to_frames()[:3] == [b"1.0", b"", b"500"]


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_screen_never_raises(frames: list[bytes]) -> None:
    result = zap_protocol.screen_request(frames)
    if isinstance(result, zap_protocol.ZAPReply):
        assert len(result.to_frames()) == 6
        assert result.status in (
            zap_protocol.ZAPStatus.FAILURE,
            zap_protocol.ZAPStatus.INTERNAL_ERROR,
        )
    else:
        assert result.mechanism == "CURVE"


def test_reply_for_result() -> None:
    request = zap_protocol.parse_request(_request())
    accepted = zap_protocol.reply_for_result(request, auth.AuthResult(True, "agent-1"))
    assert accepted.to_frames() == [b"1.0", b"7", b"200", b"OK", b"agent-1", b""]
    refused = zap_protocol.reply_for_result(request, auth.AuthResult(False, "ignored"))
    assert refused.to_frames()[:3] == [b"1.0", b"7", b"400"]
    assert refused.user_id == ""


def test_reply_without_user_id_uses_public_key() -> None:
    request = zap_protocol.parse_request(_request())
    reply = zap_protocol.reply_for_result(request, auth.AuthResult(True))
    assert reply.user_id == z85.encode(RAW_KEY).decode()


def test_reply_metadata_encoding() -> None:
    reply = zap_protocol.ZAPReply(
        request_id=b"1",
        status=zap_protocol.ZAPStatus.SUCCESS,
        text="OK",
        metadata={"X-Role": b"admin"},
    )
    assert reply.to_frames()[5] == b"\x06X-Role\x00\x00\x00\x05admin"
    assert zap_protocol.encode_metadata({}) == b""
    with pytest.raises(ValueError, match="metadata name"):
        zap_protocol.encode_metadata({"": b"x"})


def test_reply_truncates_long_status_text() -> None:
    reply = zap_protocol.ZAPReply(
        request_id=b"1", status=zap_protocol.ZAPStatus.FAILURE, text="x" * 10_000
    )
    assert len(reply.to_frames()[3]) == 200


def test_split_envelope() -> None:
    envelope, body = zap_protocol.split_envelope([b"peer", b"", b"1.0", b"1"])
    assert envelope == [b"peer", b""]
    assert body == [b"1.0", b"1"]
    with pytest.raises(ProtocolError, match="delimiter"):
        zap_protocol.split_envelope([b"peer", b"1.0"])
