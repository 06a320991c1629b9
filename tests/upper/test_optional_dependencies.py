"""thriftpy2 and msgspec are optional: a clear ImportError only when their module is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_the_upper_package_imports_neither_dependency() -> None:
    result = run(
        "import sys, callosum_like.upper as u\n"
        "assert u.__all__ == []\n"
        "assert 'thriftpy2' not in sys.modules and 'msgspec' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("blocked", "module", "extra"),
    [
        ("thriftpy2", "callosum_like.upper.thrift", "thrift"),
        ("msgspec", "callosum_like.upper.schema", "schema"),
    ],
)
def test_a_missing_dependency_names_the_extra_to_install(
    blocked: str, module: str, extra: str
) -> None:
    result = run(
        f"import sys\nsys.modules[{blocked!r}] = None  # as if it were not installed\n"
        "import callosum_like.upper\n"
        f"import {module}\n"
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ")
    assert f"needs {blocked}" in last
    assert f"pip install 'callosum-like[{extra}]'" in last


def test_the_other_idl_works_without_the_missing_dependency() -> None:
    result = run(
        "import sys\nsys.modules['thriftpy2'] = None\n"
        "from callosum_like.upper import schema\n"
        "assert schema.load('idl/kvstore.schema.toml').name == 'KVStore'\n"
    )
    assert result.returncode == 0, result.stderr
