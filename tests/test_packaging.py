"""The package as users get it: the sdist and the wheel built from it, in a fresh venv.

Builds the sdist from a copy of the source tree, the wheel from the unpacked sdist (so a file
missing from the sdist fails here, as with ``python -m build``), installs the wheel into a
new venv with its dependencies from PyPI, and runs the command line, two examples and the
package-data checks from a directory outside the source tree, with no ``PYTHONPATH``: only
the installed package can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a source tree holds that is not source (as .gitignore says, and the VCS's own).
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis",
    "results", "htmlcov", ".coverage",
)  # fmt: skip
#: The files the installed package must hold besides its modules.
PACKAGE_DATA = ("callosum_like/py.typed",)
#: Examples that need nothing beyond the package's own dependencies, and what they print.
EXAMPLES = {"bidirectional.py": "connected peers: ['worker-1']", "ordering.py": "SERIALIZED"}


def run(argv: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build(tmp: Path) -> tuple[Path, Path]:
    """The sdist, and the wheel built from the unpacked sdist, by the declared backend."""
    builder = tmp / "builder"  # a venv with what pyproject.toml's [build-system] requires
    run([sys.executable, "-m", "venv", str(builder)], tmp)
    python = str(builder / "bin" / "python")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    run([python, "-m", "pip", "install", "--quiet", *requires], tmp, timeout=240)
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    dist = tmp / "dist"
    dist.mkdir()
    code = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    name = run([python, "-c", code, str(dist)], source).strip().splitlines()[-1]
    sdist = dist / name
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 on
            archive.extractall(tmp / "unpacked", filter="data")
        else:  # our own archive, just built
            archive.extractall(tmp / "unpacked")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheels = tmp / "wheels"
    pip_wheel = ["-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    run([python, *pip_wheel, "-w", str(wheels), str(unpacked)], tmp)
    (wheel,) = wheels.glob("callosum_like-*.whl")
    return sdist, wheel


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_from_the_sdist_works_in_a_fresh_venv(tmp_path: Path) -> None:
    sdist, wheel = build(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for data in PACKAGE_DATA:
        assert data in names, f"{data} is not in the wheel"
    assert "callosum_like/telemetry/console.html" in names
    assert not any(name.startswith("tests/") for name in names)
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/setup.cfg") for name in archive.getnames())

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, timeout=240)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "keygen" in run([python, "-m", "callosum_like", "--help"], elsewhere)
    where = run([python, "-c", "import callosum_like; print(callosum_like.__file__)"], elsewhere)
    assert where.startswith(str(venv)), where
    check = (
        "import pathlib, callosum_like\n"
        "root = pathlib.Path(callosum_like.__file__).parent.parent\n"
        f"missing = [p for p in {PACKAGE_DATA!r} if not (root / p).is_file()]\n"
        "assert not missing, missing\n"
        "from callosum_like.telemetry import Console\n"
        "try:\n"
        "    from callosum_like.telemetry import OpenTelemetry\n"
        "except ImportError as exc:\n"
        "    assert \"'otel' extra\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('opentelemetry is not a dependency')\n"
    )
    run([python, "-c", check], elsewhere)
    for example, expected in EXAMPLES.items():
        shutil.copy(ROOT / "examples" / example, elsewhere / example)
        assert expected in run([python, example], elsewhere, timeout=60)
