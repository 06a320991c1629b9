"""The demo's typed section: one Thrift call and one msgpack-schema call on the same peers.

Theory of operation: both IDLs are embedded here as text (``thriftpy2.load_fp`` and
``schema.loads``), so the demo needs no files beside the installed package. The server
process calls ``register_typed(server)``; the client process calls ``typed_calls(client,
say)``. Only ``demo`` imports this module.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..peer import Peer
from ..upper import schema

__all__ = ["register_typed", "typed_calls"]

THRIFT_IDL = """
exception DivideByZero { 1: string dividend }
service Calculator {
    double divide(1: double dividend, 2: double divisor) throws (1: DivideByZero oops)
}
"""

SCHEMA_IDL = """
[service]
name = "Greeter"

[records.Greeting]
text = "str"
shout = "bool"

[methods.greet]
args = { name = "str", times = "int" }
result = "Greeting"
"""


def _thrift() -> Any:
    import thriftpy2

    return thriftpy2.load_fp(io.StringIO(THRIFT_IDL), module_name="demo_calculator_thrift")


class _Calculator:
    def divide(self, dividend: float, divisor: float) -> float:
        if divisor == 0:
            raise _thrift_module().DivideByZero(dividend=str(dividend))
        return dividend / divisor


class _Greeter:
    async def greet(self, name: str, times: int) -> Any:
        return greeter.records.Greeting(text=" ".join([f"hello {name}"] * times), shout=False)


_module: Any = None
greeter = schema.loads(SCHEMA_IDL, source="demo greeter")


def _thrift_module() -> Any:
    global _module
    if _module is None:
        _module = _thrift()
    return _module


def register_typed(server: Peer) -> None:
    """Serve the demo's Thrift Calculator and schema Greeter on ``server``."""
    from ..upper.thrift import ThriftServer

    ThriftServer(_thrift_module().Calculator, _Calculator()).attach(server)
    schema.SchemaServer(greeter, _Greeter()).attach(server)


async def typed_calls(client: Peer, say: Callable[[str], None]) -> None:
    """Make one typed call of each kind, and show a declared Thrift exception and a bad call."""
    from ..upper.thrift import ThriftClient

    module = _thrift_module()
    calculator = ThriftClient(client, module.Calculator)
    say(f"   Thrift  Calculator.divide(7.0, 2.0) -> {await calculator.divide(7.0, 2.0)}")
    try:
        await calculator.divide(1.0, 0.0)
    except module.DivideByZero as exc:
        oops = f"DivideByZero({exc.dividend!r})"
        say(f"   Thrift  Calculator.divide(1.0, 0.0) raised the IDL's {oops}")
    greeter_client = schema.SchemaClient(client, greeter)
    greeting = await greeter_client.greet(name="agent", times=2)
    say(f"   schema  Greeter.greet(name='agent', times=2) -> {greeting!r}")
    try:
        await greeter_client.greet(name="agent", times="twice")
    except Exception as exc:  # SchemaError, raised before anything is sent
        say(f"   schema  Greeter.greet(times='twice') refused locally: {type(exc).__name__}: {exc}")
