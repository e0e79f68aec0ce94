"""The SDK is its own distribution: it installs into a fresh virtualenv with httpx and orjson
alone, and importing it loads nothing of the server or the server's dependencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).parents[2] / "client"
# Distributions (pip's names) and modules (import names) the server needs and the SDK must not.
SERVER_DISTRIBUTIONS = {
    "taskmeter", "pandas", "numpy", "pyarrow", "sqlalchemy", "fastapi", "pydantic", "alembic",
    "adbc-driver-manager", "adbc-driver-postgresql", "adbc-driver-sqlite", "genai-prices", "dask",
}  # fmt: skip
SERVER_MODULES = (
    "metering", "pricing", "reports", "api", "pandas", "numpy", "pyarrow", "sqlalchemy", "fastapi", "pydantic",
    "adbc_driver_manager", "genai_prices",
)  # fmt: skip
CHECK_IMPORT = f"""
import sys
from taskmeter_client import AsyncTaskmeterClient, TaskmeterClient, extract_usage
loaded = sorted(m for m in {SERVER_MODULES!r} if m in sys.modules)
assert not loaded, loaded
usage = extract_usage({{"model": "gpt-4o", "usage": {{"prompt_tokens": 12, "completion_tokens": 3}}}})
print(usage.provider, usage.input_tokens, usage.output_tokens)
"""


def run(*args: str | Path, cwd: Path | None = None, alone: bool = False) -> str:
    """`alone`: without this environment's PYTHONPATH (a clock-shifted run puts tests/ there)."""
    env = {k: v for k, v in os.environ.items() if not (alone and k in ("PYTHONPATH", "TEST_CLOCK_OFFSET_S"))}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_importing_the_sdk_loads_nothing_of_the_server(tmp_path: Path) -> None:
    """Here every server module is importable, so a stray import would load it."""
    assert run(sys.executable, "-c", CHECK_IMPORT, cwd=tmp_path).split() == ["openai", "12", "3"]


def test_the_sdk_installs_alone_with_httpx_and_orjson(tmp_path: Path) -> None:
    wheels, source = tmp_path / "wheels", tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", source, "-w", wheels)  # leaves the checkout as it is
    [wheel] = wheels.glob("taskmeter_client-*.whl")
    # the SDK's dependencies at the versions this environment was tested with (from the pip cache)
    pins = tmp_path / "pins.txt"
    pins.write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
        if d.metadata["Name"] not in ("taskmeter", "taskmeter-client")
    ))  # fmt: skip
    run(*pip, "download", "--only-binary=:all:", "-c", pins, "-d", wheels, wheel)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    pip = (python, "-m", "pip", "--disable-pip-version-check", "-q")
    run(*pip, "install", "--no-index", "--find-links", wheels, "taskmeter-client", alone=True)

    listed = json.loads(run(python, "-m", "pip", "list", "--format", "json", alone=True))
    installed = {d["name"].lower().replace("_", "-") for d in listed}
    assert {"taskmeter-client", "httpx", "orjson"} <= installed
    assert installed & SERVER_DISTRIBUTIONS == set()
    assert run(python, "-c", CHECK_IMPORT, cwd=tmp_path, alone=True).split() == ["openai", "12", "3"]
