"""The generated stubs match the protos, import cleanly, and register the descriptors reflection serves."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest
import sessiond_client.api.v1 as api_v1
from google.protobuf import descriptor_pool

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos" / "sessiond" / "v1"
PROTO_FILES = sorted(f"sessiond/v1/{p.name}" for p in PROTO_DIR.glob("*.proto"))
GENERATED_MODULES = sorted(
    f"{api_v1.__name__}.{m.name}"
    for m in pkgutil.iter_modules(api_v1.__path__)
    if m.name.endswith(("_pb2", "_pb2_grpc"))
)


def _load_gen_protos() -> ModuleType:
    """Import scripts/gen_protos.py by path: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_protos_and_generated_modules_to_check() -> None:
    # Guards the parametrized tests below against passing vacuously on an empty glob.
    assert PROTO_FILES
    assert len(GENERATED_MODULES) == 2 * len(PROTO_FILES)


def test_committed_stubs_match_a_fresh_generation() -> None:
    stale = _load_gen_protos().is_stale()
    assert stale == [], f"stale generated stubs {stale}: run `make gen` and commit the result"


@pytest.mark.parametrize("name", GENERATED_MODULES)
def test_generated_module_imports(name: str) -> None:
    importlib.import_module(name)


@pytest.mark.parametrize("proto_file", PROTO_FILES)
def test_file_descriptor_is_registered_under_its_proto_path(proto_file: str) -> None:
    for name in GENERATED_MODULES:
        importlib.import_module(name)
    pool = descriptor_pool.Default()
    file = pool.FindFileByName(proto_file)
    assert file.package == "sessiond.v1"
    # Reflection resolves imports by file name, so a sessiond import must use the same path it is registered under.
    for dep in file.dependencies:
        if dep.package == "sessiond.v1":
            assert dep.name in PROTO_FILES


def test_session_service_is_found_by_full_name() -> None:
    for name in GENERATED_MODULES:
        importlib.import_module(name)
    service = descriptor_pool.Default().FindServiceByName("sessiond.v1.SessionService")
    assert service.file.name in PROTO_FILES
