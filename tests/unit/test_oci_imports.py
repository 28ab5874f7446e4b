"""kata.oci stays cheap to import in the guest: no asyncio, no protobuf unless translate is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

OCI = Path(__file__).resolve().parents[2] / "src" / "kata" / "oci"
HEAVY = ("asyncio", "google.protobuf", "rich", "pyroute2", "qemu", "kata.protocols")


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith(HEAVY)}


@pytest.mark.parametrize(
    "statement", ["import kata.oci.model", "import kata.oci", "from kata.oci import load_bundle"]
)
def test_model_and_loading_import_nothing_heavy(statement: str) -> None:
    assert heavy(imported_after(statement)) == set()


def test_translate_is_what_brings_protobuf() -> None:
    modules = imported_after("import kata.oci.translate")
    assert "google.protobuf" in modules
    assert not any(m.startswith("asyncio") for m in modules)


def test_only_translate_imports_protobuf_types() -> None:
    offenders = []
    for path in sorted(OCI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(n.startswith(("google", "kata.protocols")) for n in names) and path.name != "translate.py":
                offenders.append(f"{path.name}: {names}")
    assert offenders == []
