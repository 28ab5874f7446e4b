"""ELF dependency reading (PT_INTERP, DT_NEEDED, DT_RUNPATH) on synthesized files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kata.errors import ImageError
from kata.image.elf import parse_dependencies, read_dependencies, resolve_libraries

BASE = 0x400000


def make_elf(needed: list[str], *, interpreter: str | None = None, runpath: str | None = None) -> bytes:
    """A little-endian ELF64 with one PT_LOAD over the whole file, optional PT_INTERP and PT_DYNAMIC."""
    strtab = b"\0"
    offsets = []
    for name in [*needed, *([runpath] if runpath else [])]:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    phnum = 2 + (interpreter is not None)
    interp_off = 64 + 56 * phnum
    interp = (interpreter.encode() + b"\0") if interpreter else b""
    strtab_off = interp_off + len(interp)
    dyn_off = (strtab_off + len(strtab) + 7) // 8 * 8
    dynamic = [(1, off) for off in offsets[:len(needed)]]
    if runpath:
        dynamic.append((29, offsets[-1]))
    dynamic += [(5, BASE + strtab_off), (0, 0)]
    dyn = b"".join(struct.pack("<qQ", tag, value) for tag, value in dynamic)
    size = dyn_off + len(dyn)
    phdrs = [struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000),
             struct.pack("<IIQQQQQQ", 2, 6, dyn_off, BASE + dyn_off, BASE + dyn_off, len(dyn), len(dyn), 8)]
    if interpreter:
        phdrs.append(struct.pack("<IIQQQQQQ", 3, 4, interp_off, BASE + interp_off, BASE + interp_off,
                                 len(interp), len(interp), 1))
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 3, 62, 1, 0, 64, 0, 0,
                         64, 56, phnum, 64, 0, 0)
    body = header + b"".join(phdrs) + interp + strtab
    return body + bytes(dyn_off - len(body)) + dyn


def test_needed_interpreter_and_runpath() -> None:
    deps = parse_dependencies(make_elf(["libm.so.6", "libc.so.6"], interpreter="/lib64/ld-linux-x86-64.so.2",
                                       runpath="$ORIGIN/../lib:/opt/lib"))
    assert deps.needed == ("libm.so.6", "libc.so.6")
    assert deps.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert deps.runpath == ("$ORIGIN/../lib", "/opt/lib")


def test_static_binary_needs_nothing() -> None:
    static = make_elf([])
    # Drop PT_DYNAMIC: rewrite its type to PT_NULL.
    patched = bytearray(static)
    patched[64 + 56: 64 + 56 + 4] = struct.pack("<I", 0)
    deps = parse_dependencies(bytes(patched))
    assert deps.needed == () and deps.interpreter is None


def test_not_elf() -> None:
    with pytest.raises(ImageError, match="ELF64"):
        parse_dependencies(b"#!/bin/sh\n" + bytes(100))


def test_closure_follows_libraries_and_runpath(tmp_path: Path) -> None:
    libs, extra = tmp_path / "lib", tmp_path / "app" / "lib"
    libs.mkdir()
    extra.mkdir(parents=True)
    (libs / "libc.so.6").write_bytes(make_elf([]))
    (libs / "libffi.so.8").write_bytes(make_elf(["libc.so.6"]))
    (extra / "libown.so").write_bytes(make_elf(["libffi.so.8"]))
    binary = tmp_path / "app" / "bin"
    binary.write_bytes(make_elf(["libown.so", "libc.so.6"], interpreter="/lib64/ld.so",
                                runpath="$ORIGIN/lib"))
    found = resolve_libraries([binary], [libs])
    assert found == {"/lib64/ld.so": Path("/lib64/ld.so"), "libown.so": extra / "libown.so",
                     "libc.so.6": libs / "libc.so.6", "libffi.so.8": libs / "libffi.so.8"}


def test_missing_library_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(make_elf(["libnothere.so.1"]))
    with pytest.raises(ImageError, match=r"libnothere\.so\.1"):
        resolve_libraries([binary], [tmp_path])


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs Debian's python3.11")
def test_debian_python() -> None:
    deps = read_dependencies(Path("/usr/bin/python3.11"))
    assert "libc.so.6" in deps.needed
    assert deps.interpreter == "/lib64/ld-linux-x86-64.so.2"
