"""Both distributions build as wheels and install from them into fresh virtual environments, outside
the repository: the library alone (with only its declared dependencies), and the server (which pulls
the library from the same wheel directory: `pip install --find-links dist sessiond`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import sessiond

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPENDENCIES = {"grpcio", "protobuf", "grpcio-status", "opentelemetry-api"}


def _run(*argv: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["GRPC_VERBOSITY"] = "ERROR"
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _sources(into: Path) -> tuple[Path, Path]:
    """Copies of the two projects' sources (setuptools builds in the tree: keep build/ out of the repo)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    client = into / "client"
    shutil.copytree(ROOT / "clients" / "python", client, ignore=ignore)
    server = into / "server"
    shutil.copytree(ROOT / "sessiond", server / "sessiond", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, server / name)
    return client, server


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    client, server = _sources(tmp_path_factory.mktemp("src"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, client, server, cwd=dist)
    names = sorted(p.name for p in dist.glob("*.whl"))
    version = sessiond.__version__
    assert names == [f"sessiond-{version}-py3-none-any.whl", f"sessiond_client-{version}-py3-none-any.whl"]
    return dist


def _fresh_venv(where: Path) -> Path:
    venv.create(where, with_pip=True, clear=True)
    return where / "bin" / "python"


def _installed(python: Path, cwd: Path) -> set[str]:
    listing = _run(python, "-m", "pip", "list", "--format=freeze", cwd=cwd)
    return {line.split("==")[0].lower().replace("_", "-") for line in listing.splitlines() if "==" in line}


@pytest.mark.timeout(900)
def test_the_library_installs_alone_with_only_its_declared_dependencies(wheels: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "client-venv")
    _run(python, "-m", "pip", "install", "--quiet", "--find-links", wheels, "sessiond-client", cwd=tmp_path)

    installed = _installed(python, tmp_path)
    assert "sessiond-client" in installed and "sessiond" not in installed and "pydantic" not in installed
    assert CLIENT_DEPENDENCIES <= installed
    out = _run(python, "-c", (
        "import asyncio, sessiond_client, sessiond_client.sync, sessiond_client.testing as t\n"
        "print(sessiond_client.__version__)\n"
        "async def main():\n"
        "    try:\n"
        "        async with t.SessiondEnvironment.start(activities=[print]):\n"
        "            pass\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"), cwd=tmp_path)
    version, message = out.splitlines()
    assert version == sessiond.__version__
    assert "pip install 'sessiond-client[testing]'" in message


@pytest.mark.timeout(900)
def test_the_server_installs_from_the_wheels_and_runs(wheels: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "server-venv")
    _run(python, "-m", "pip", "install", "--quiet", "--find-links", wheels, "sessiond", cwd=tmp_path)

    version = sessiond.__version__
    assert _run(tmp_path / "server-venv" / "bin" / "sessiond", "--version", cwd=tmp_path).strip() == \
        f"sessiond {version} (sessiond-client {version})"
    _run(python, "-c", "import sessiond.server, sessiond_client.testing, sessiond_client.api.v1.session_pb2",
         cwd=tmp_path)
    assert {"sessiond", "sessiond-client"} <= _installed(python, tmp_path)
