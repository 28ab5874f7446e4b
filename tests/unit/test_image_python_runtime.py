"""Which imports the guest's Python needs: the AST scan and the asyncio poisoning rule."""

from __future__ import annotations

from kata.image.python_runtime import FORBIDDEN_IN_GUEST, imports_of, poisoned_modules

SOURCE = '''
from __future__ import annotations
import os, os.path
from . import frames
from .status import Code
from ..errors import ProtocolError
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.config import Config
else:
    import struct

def later():
    import socket
    from concurrent import futures
'''


def test_scan_finds_all_runtime_imports() -> None:
    names = imports_of(SOURCE, "kata.ttrpc.connection")
    assert {"__future__", "os", "os.path", "kata.ttrpc", "kata.ttrpc.status", "kata.errors", "socket",
            "concurrent", "struct"} <= names
    assert {"?kata.ttrpc.frames", "?kata.ttrpc.status.Code", "?kata.errors.ProtocolError",
            "?concurrent.futures"} <= names
    assert not any("config" in name for name in names)


def test_relative_imports_in_a_package() -> None:
    assert "kata.ttrpc.frames" in imports_of("from .frames import x", "kata.ttrpc", is_package=True)
    assert "kata.ttrpc" in imports_of("from . import frames", "kata.ttrpc.server")


def test_poison_spreads_through_imports_and_parents() -> None:
    imports = {
        "kata.ttrpc": {"kata.ttrpc.frames"},
        "kata.ttrpc.frames": {"struct"},
        "kata.ttrpc.aio": {"asyncio"},
        "kata.ttrpc.aio.client": {"kata.ttrpc.frames"},
        "kata.ttrpc.uses_aio": {"kata.ttrpc.aio"},
        "kata.ttrpc.from_import": {"kata.ttrpc", "?kata.ttrpc.aio"},
        "kata.ttrpc.attribute": {"kata.ttrpc", "?kata.ttrpc.frames.Frame"},
    }
    assert poisoned_modules(imports, FORBIDDEN_IN_GUEST) == {
        "kata.ttrpc.aio", "kata.ttrpc.aio.client", "kata.ttrpc.uses_aio", "kata.ttrpc.from_import"}
