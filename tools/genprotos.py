"""Regenerate the committed protobuf code: python tools/genprotos.py [--out DIR]."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# Where each top-level tree of protos/ goes: the product's under src/ (kata/protocols/pb), the tests'
# own (the CRI client's, tests/pb) beside the tests. ``--out DIR`` puts every tree under DIR.
TREES = {"kata": ROOT / "src", "tests": ROOT}


def proto_files(tree: str = "kata") -> list[Path]:
    """Every .proto source we own in ``tree`` (a top-level directory of protos/), in a stable order."""
    return sorted((PROTO_ROOT / tree).rglob("*.proto"))


def generate(out: Path, tree: str = "kata") -> None:
    """Run protoc (from grpcio-tools, pinned) with mypy-protobuf stubs into ``out``."""
    include = str(resources.files("grpc_tools") / "_proto")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files(tree)]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out}",
        f"--mypy_out=quiet:{out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"genprotos: protoc failed on protos/{tree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="put every tree under this directory (default: each its own)")
    out = parser.parse_args().out
    for tree, default in TREES.items():
        generate(out or default, tree)


if __name__ == "__main__":
    main()
