"""The protocol core does no I/O: wire/, session, ordering, fairness import no I/O library.

import-linter's ``forbidden`` contract covers zmq, aiojobs and thriftpy2; this AST check also
covers the standard library's ``asyncio`` and ``socket``, and follows the core's own internal
imports so that an I/O module cannot come in through the back door.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import callosum_like

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(callosum_like.__file__).parent
SANS_IO_MODULES = ("session", "ordering", "fairness")
CORE = sorted([*PACKAGE.glob("wire/*.py"), *(PACKAGE / f"{name}.py" for name in SANS_IO_MODULES)])
FORBIDDEN = frozenset({"asyncio", "socket", "zmq", "aiojobs", "thriftpy2"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def path_of(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_in(source: str, package: str) -> tuple[set[str], set[str]]:
    """(absolute modules, internal modules) imported by ``source``, a module of ``package``."""
    external: set[str] = set()
    internal: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            external.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module is not None
            external.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:  # ``from . import messages`` imports a module
                sub = f"{base}.{alias.name}"
                internal.add(sub if path_of(sub) else base)
    return external, internal


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return imports_in(path.read_text(), package)


def roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_io_library(path: Path) -> None:
    external, _ = imports_of(path)
    assert not roots(external) & FORBIDDEN


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_io_library_through_internal_modules(path: Path) -> None:
    seen: set[str] = set()
    todo = [module_name(path)]
    while todo:
        name = todo.pop()
        if name in seen or name == "callosum_like":
            continue  # the package __init__ is the public surface, above every layer
        seen.add(name)
        found = path_of(name)
        assert found is not None, name
        external, internal = imports_of(found)
        assert not roots(external) & FORBIDDEN, f"{name} imports I/O"
        todo.extend(internal)


def test_the_core_files_exist() -> None:
    names = {p.name for p in CORE}
    assert {"codec.py", "framing.py", "messages.py", "session.py", "ordering.py"} <= names


def test_the_checker_sees_every_import_form() -> None:
    source = (
        "import asyncio\n"
        "import zmq.asyncio as z\n"
        "from socket import socket\n"
        "def f():\n    import aiojobs\n"
        "if False:\n    from thriftpy2 import load\n"
        "from . import messages\n"
        "from ..errors import ProtocolError\n"
        "from ..peer import Peer\n"
    )
    external, internal = imports_in(source, "callosum_like.wire")
    assert roots(external) == FORBIDDEN
    assert internal == {"callosum_like.wire.messages", "callosum_like.errors", "callosum_like.peer"}
