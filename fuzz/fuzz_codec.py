"""A coverage-guided fuzz target for the codec and the TCP framing: the network's two doors.

Run it by hand with atheris (not a dependency of the project)::

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_codec.py -max_total_time=300 fuzz/corpus

Any libFuzzer flag works (``-runs=N``, ``-jobs=N``, a corpus directory to grow). Without
atheris the same target runs over random and mutated inputs (a smoke run, as the test
suite does)::

    .venv/bin/python fuzz/fuzz_codec.py --random 100000 [--seed 1]

The properties checked on every input:

* ``decode`` returns a message or raises ``ProtocolError`` (``OversizeBodyError`` is one);
  nothing else, whatever the bytes;
* a message that decodes re-encodes to frames that decode to the same message;
* ``FrameDecoder`` fed the bytes in arbitrary pieces returns whole messages or raises
  ``ProtocolError``, never buffers more than one incomplete message, and gives the same
  messages however the bytes are split;
* ``unpack_body`` returns a value or raises ``ProtocolError``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: find the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callosum_like.errors import ProtocolError
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode, pack_body, unpack_body
from callosum_like.wire.framing import FrameDecoder, encode_message

__all__ = ["test_one_input", "run_random", "SEEDS"]

#: The body limit the target decodes with: small, so the oversize paths are reached.
MAX_BODY = 4096
#: The frame limit the framing decoder is given.
MAX_FRAME = 8192

#: Valid messages of every kind, to mutate from (what a corpus would start with).
SEEDS: Sequence[m.Message] = (
    m.Hello(identity="agent", max_body_size=MAX_BODY),
    m.Welcome(identity="server", assigned="agent", max_body_size=MAX_BODY),
    m.Call(id=1, method="echo", body=pack_body({"x": [1, 2.5, b"\x00"]}), order_key="k"),
    m.Call(id=2, method="echo", body=pack_body("x" * 5000), headers={"t": "1"}, timeout=1.5),
    m.Result(id=1, body=pack_body([None, True])),
    m.Failure(id=1, name="ValueError", repr="ValueError('no')", traceback="..."),
    m.Error(id=1, code=2, message="no such method"),
    m.Cancel(id=1),
    m.Cancelled(id=1, reason="timeout"),
    m.Ping(),
    m.Pong(),
    m.Goodbye(reason="closing"),
    m.StreamItem(id=3, body=pack_body(7)),
    m.StreamEnd(id=3),
    m.Credit(id=3, amount=16),
)


def split_frames(data: bytes) -> list[bytes]:
    """One input becomes 1 to 3 frames: the first byte says where to cut."""
    if not data:
        return [b""]
    cut, rest = data[0], data[1:]
    if cut % 3 == 0:
        return [rest]
    at = cut % (len(rest) + 1)
    frames = [rest[:at], rest[at:]]
    if cut % 3 == 2:
        frames.append(rest[at // 2 : at])
    return frames


def check_decode(frames: Sequence[bytes]) -> None:
    """``decode`` gives a message or ProtocolError; a message round-trips."""
    try:
        msg = decode(frames, max_body_size=MAX_BODY)
    except ProtocolError:
        return
    for compress in (False, True):
        again = decode(encode(msg, compress=compress), max_body_size=MAX_BODY)
        assert again == msg, (msg, again)
    if isinstance(msg, m.Call | m.Result | m.StreamItem):
        check_body(msg.body)


def check_body(body: bytes) -> None:
    """``unpack_body`` gives a value or ProtocolError."""
    with contextlib.suppress(ProtocolError):
        unpack_body(body)


def check_framing(data: bytes) -> None:
    """The framing decoder: same messages whatever the pieces, bounded buffering."""
    whole = _feed(data, [len(data)])
    step = (data[0] % 7 + 1) if data else 1
    pieces = _feed(data, [step] * (len(data) // step + 1))
    assert whole == pieces, (whole, pieces)


def _feed(data: bytes, sizes: list[int]) -> list[list[bytes]] | str:
    decoder = FrameDecoder(MAX_FRAME)
    out: list[list[bytes]] = []
    position = 0
    try:
        for size in sizes:
            out.extend(decoder.feed(data[position : position + size]))
            position += size
            # One incomplete message at most: its frames, their length prefixes, and the
            # count, each frame under MAX_FRAME.
            assert decoder.buffered <= 16 * (MAX_FRAME + 4) + 2, decoder.buffered
    except ProtocolError:
        return "error"
    return out


def test_one_input(data: bytes) -> None:
    """The fuzz target: every property above on one input."""
    check_decode(split_frames(data))
    check_body(data)
    check_framing(data)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A cheap mutation: flip, insert, delete or truncate, a few times."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(4)
        at = rng.randrange(len(buf) + 1)
        if action == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif action == 1:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif action == 2:
            del buf[at : at + rng.randint(1, 8)]
        else:
            del buf[at:]
    return bytes(buf)


def seed_inputs() -> list[bytes]:
    """Byte strings made from valid messages: as frames for ``decode`` and as a stream."""
    inputs = []
    for msg in SEEDS:
        frames = encode(msg, compress=True)
        inputs.append(b"".join(encode_message(frames)))
        if len(frames) == 1:
            inputs.append(bytes([0]) + frames[0])
            continue
        data = frames[0] + frames[1]
        for cut in range(1, 256, 3):  # cut % 3 == 1: two frames, split at cut % (len + 1)
            if cut % (len(data) + 1) == len(frames[0]):
                inputs.append(bytes([cut]) + data)
                break
    return inputs


def run_random(count: int, seed: int = 0, target: Callable[[bytes], None] = test_one_input) -> int:
    """Run the target on ``count`` inputs: random bytes and mutated valid messages."""
    rng = random.Random(seed)
    seeds = seed_inputs()
    for data in seeds:
        target(data)
    for _ in range(count):
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randint(0, 64))
        else:
            data = mutate(rng.choice(seeds), rng)
        target(data)
    return count + len(seeds)


def main(argv: Sequence[str]) -> int:
    """Fuzz with atheris if it is installed, else run ``--random N`` inputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--random", type=int, default=0, help="run N inputs without atheris")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv[1:])
    if args.help:
        print(__doc__)
        return 0
    if args.random:
        ran = run_random(args.random, args.seed)
        print(f"{ran} inputs, no property violated")
        return 0
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris is not installed: pip install atheris, or pass --random N", file=sys.stderr)
        return 2
    atheris.instrument_all()  # coverage feedback from the codec and the framing
    atheris.Setup([argv[0], *rest], test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
