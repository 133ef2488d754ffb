"""Generate the Python stubs from protos/: the one codegen command.

Three sets of stubs, each produced the same way (protoc + grpc + mypy-protobuf, imports rewritten):

* ``sessiond.v1`` (protos/sessiond/v1) goes into the client package as ``sessiond_client.api.v1``,
  the only copy of sessiond's own API stubs.
* ``etcdserverpb`` (protos/etcd/etcdserverpb: sessiond's description of the part of etcd's v3 API
  the etcd store speaks) goes into the server as ``sessiond.store.etcd.api``; only the server needs it.
* ``sessiond.internal.v1`` (protos/sessiond/internal/v1: the records the etcd store keeps) goes into
  the server as ``sessiond.store.records``.

protoc writes imports that follow the proto path (``from sessiond.v1 import session_pb2``), which
would collide with the server's own ``sessiond`` package, so they are rewritten to the target package.

Usage:
    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # exit 1 if the committed stubs are stale
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """One set of stubs: the protos of one proto package and where their Python modules go."""

    proto_root: Path  # the -I root; proto files are named relative to it
    proto_package: str  # e.g. "sessiond.v1"; its files live in proto_root/<package as a path>
    out_dir: Path
    python_package: str
    init_doc: str
    py_typed: bool  # a py.typed marker for a distributed package

    @property
    def proto_dir(self) -> Path:
        return self.proto_root.joinpath(*self.proto_package.split("."))

    def rewrites(self) -> list[tuple[re.Pattern[str], str]]:
        """The import rewrites applied to every generated file: proto package path -> python package."""
        dotted = re.escape(self.proto_package)
        return [
            (re.compile(rf"^from {dotted} import ", re.M), f"from {self.python_package} import "),
            (re.compile(rf"^import {dotted}\.(\w+)", re.M), rf"import {self.python_package}.\1"),
            (re.compile(rf"\b{dotted}\.(\w+_pb2)\b"), rf"{self.python_package}.\1"),
        ]


TARGETS = [
    Target(
        proto_root=ROOT / "protos",
        proto_package="sessiond.v1",
        out_dir=ROOT / "clients" / "python" / "src" / "sessiond_client" / "api" / "v1",
        python_package="sessiond_client.api.v1",
        init_doc="Generated gRPC stubs for the sessiond.v1 contract. Do not edit: run scripts/gen_protos.py.",
        py_typed=True,
    ),
    Target(
        proto_root=ROOT / "protos" / "etcd",
        proto_package="etcdserverpb",
        out_dir=ROOT / "sessiond" / "store" / "etcd" / "api",
        python_package="sessiond.store.etcd.api",
        init_doc="Generated gRPC stubs for the part of etcd's v3 API sessiond uses. Do not edit: run "
        "scripts/gen_protos.py.",
        py_typed=False,
    ),
    Target(
        proto_root=ROOT / "protos",
        proto_package="sessiond.internal.v1",
        out_dir=ROOT / "sessiond" / "store" / "records",
        python_package="sessiond.store.records",
        init_doc="Generated stubs for the records the etcd store keeps (internal to replicas). Do not edit: "
        "run scripts/gen_protos.py.",
        py_typed=False,
    ),
]


def _plugin(name: str) -> str:
    """Locate a protoc plugin installed beside this interpreter (venvs are not always on PATH)."""
    candidate = Path(sys.executable).parent / name
    found = candidate if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return str(found)


def generate(target: Target, out_dir: Path) -> None:
    """Run protoc for every .proto of ``target`` and write the rewritten stubs into out_dir."""
    protos = sorted(str(p.relative_to(target.proto_root)) for p in target.proto_dir.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{target.proto_root}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}", *protos,
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"protoc failed:\n{done.stderr}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.iterdir():
            if old.is_file():
                old.unlink()
        (out_dir / "__init__.py").write_text(f'"""{target.init_doc}"""\n')
        if target.py_typed:
            (out_dir / "py.typed").write_text("")
        for src in sorted(Path(tmp).joinpath(*target.proto_package.split(".")).iterdir()):
            text = src.read_text()
            for pattern, repl in target.rewrites():
                text = pattern.sub(repl, text)
            (out_dir / src.name).write_text(text)


def is_stale() -> list[str]:
    """Return the paths (relative to the repository) of generated files that differ from a fresh generation."""
    stale: list[str] = []
    for target in TARGETS:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "out"
            generate(target, fresh)
            if not target.out_dir.is_dir():
                stale.append(str(target.out_dir.relative_to(ROOT)))
                continue
            cmp = filecmp.dircmp(fresh, target.out_dir, ignore=["__pycache__"])
            names = cmp.left_only + cmp.right_only + cmp.diff_files
            stale.extend(str((target.out_dir / name).relative_to(ROOT)) for name in names)
    return sorted(stale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = is_stale()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + " (run scripts/gen_protos.py)")
            return 1
        print("generated stubs are up to date")
        return 0
    for target in TARGETS:
        generate(target, target.out_dir)
        print(f"generated stubs in {target.out_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
