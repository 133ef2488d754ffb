"""Generate the Python stubs for the sessiond.v1 contract: the one codegen command.

The stubs go into the client package as ``sessiond_client.api.v1`` (the only copy). protoc
writes imports that follow the proto path (``from sessiond.v1 import session_pb2``), which
would collide with the server's own ``sessiond`` package, so they are rewritten.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "sessiond" / "v1"
OUT_DIR = ROOT / "clients" / "python" / "src" / "sessiond_client" / "api" / "v1"
PACKAGE = "sessiond_client.api.v1"

_INIT = '"""Generated gRPC stubs for the sessiond.v1 contract. Do not edit: run scripts/gen_protos.py."""\n'

# Rewrites applied to every generated file: the proto package path becomes the client package.
_REWRITES = [
    (re.compile(r"^from sessiond\.v1 import ", re.M), f"from {PACKAGE} import "),
    (re.compile(r"^import sessiond\.v1\.(\w+)", re.M), rf"import {PACKAGE}.\1"),
    (re.compile(r"\bsessiond\.v1\.(\w+_pb2)\b"), rf"{PACKAGE}.\1"),
]


def _plugin(name: str) -> str:
    """Locate a protoc plugin installed beside this interpreter (venvs are not always on PATH)."""
    candidate = Path(sys.executable).parent / name
    found = candidate if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return str(found)


def generate(out_dir: Path) -> None:
    """Run protoc for every .proto and write the rewritten stubs into out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
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
        (out_dir / "__init__.py").write_text(_INIT)
        (out_dir / "py.typed").write_text("")
        for src in sorted((Path(tmp) / "sessiond" / "v1").iterdir()):
            text = src.read_text()
            for pattern, repl in _REWRITES:
                text = pattern.sub(repl, text)
            (out_dir / src.name).write_text(text)


def is_stale() -> list[str]:
    """Return the names of generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh)
        cmp = filecmp.dircmp(fresh, OUT_DIR)
        return sorted(cmp.left_only + cmp.right_only + cmp.diff_files)


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
    generate(OUT_DIR)
    print(f"generated stubs in {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
