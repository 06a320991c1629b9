"""``Request``: what a handler receives, built the usual way or by the serving side's builder."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.request import Request, make_request

TEXT = st.text(max_size=8)


@given(
    method=TEXT,
    body=st.none() | st.integers() | st.binary(max_size=8) | TEXT,
    peer_id=TEXT,
    order_key=st.none() | TEXT,
    headers=st.dictionaries(TEXT, TEXT | st.binary(max_size=8), max_size=3),
)
def test_make_request_builds_the_request_the_class_builds(
    method: str, body: object, peer_id: str, order_key: str | None, headers: dict[str, str]
) -> None:
    made = make_request(method, body, peer_id, order_key, headers)
    usual = Request(method=method, body=body, peer_id=peer_id, order_key=order_key, headers=headers)
    assert type(made) is Request
    assert made == usual
    assert [getattr(made, f.name) for f in dataclasses.fields(made)] == [
        method,
        body,
        peer_id,
        order_key,
        headers,
    ]


def test_a_made_request_is_frozen() -> None:
    request = make_request("echo", b"x", "client", None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.body = b"y"  # type: ignore[misc]
    assert hash(make_request("echo", 1, "c", "k", ())) == hash(  # type: ignore[arg-type]
        Request(method="echo", body=1, peer_id="c", order_key="k", headers=())  # type: ignore[arg-type]
    )
