"""Regenerate the committed protobuf code: python tools/genprotos.py [--out DIR]."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "src"


def proto_files() -> list[Path]:
    """Every .proto source we own, in a stable order."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools, pinned) with mypy-protobuf stubs into ``out``."""
    include = str(resources.files("grpc_tools") / "_proto")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
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
        raise SystemExit("genprotos: protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
