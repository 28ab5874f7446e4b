"""Shared-library closure of ELF binaries, read from PT_INTERP and DT_NEEDED (no ldd, nothing run)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kata.errors import ImageError

__all__ = ["DEFAULT_LIBRARY_DIRS", "ElfDependencies", "read_dependencies", "resolve_libraries"]

# Debian's x86_64 loader searches these (multiarch first) when there is no ld.so.cache.
DEFAULT_LIBRARY_DIRS = (
    Path("/lib/x86_64-linux-gnu"),
    Path("/usr/lib/x86_64-linux-gnu"),
    Path("/lib64"),
    Path("/usr/lib64"),
    Path("/lib"),
    Path("/usr/lib"),
)
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
DYNAMIC_ENTRY = struct.Struct("<qQ")


@dataclass(frozen=True)
class ElfDependencies:
    """What an ELF file needs from the dynamic loader."""

    interpreter: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def _c_string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        raise ImageError(f"ELF string at {offset:#x} is out of range")
    return data[offset:end].decode("utf-8", "replace")


def parse_dependencies(data: bytes) -> ElfDependencies:
    """PT_INTERP, DT_NEEDED and DT_RUNPATH/DT_RPATH of a little-endian ELF64 image.

    Raises:
        ImageError: when ``data`` is not a little-endian ELF64 file or its tables are out of range.
    """
    if len(data) < ELF_HEADER.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError("not a little-endian ELF64 file")
    header = ELF_HEADER.unpack_from(data)
    phoff, phentsize, phnum = header[5], header[9], header[10]
    segments = [PROGRAM_HEADER.unpack_from(data, phoff + i * phentsize) for i in range(phnum)]
    interpreter = None
    dynamic: tuple[int, int] | None = None
    for p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, _memsz, _align in segments:
        if p_type == PT_INTERP:
            interpreter = _c_string(data, p_offset)
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return ElfDependencies(interpreter, (), ())
    entries: list[tuple[int, int]] = []
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], DYNAMIC_ENTRY.size):
        tag, value = DYNAMIC_ENTRY.unpack_from(data, offset)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab_address = next((value for tag, value in entries if tag == DT_STRTAB), None)
    if strtab_address is None:
        raise ImageError("ELF dynamic section has no DT_STRTAB")
    strtab = _file_offset(segments, strtab_address)
    needed = tuple(_c_string(data, strtab + v) for tag, v in entries if tag == DT_NEEDED)
    paths = [_c_string(data, strtab + v) for tag, v in entries if tag in (DT_RUNPATH, DT_RPATH)]
    runpath = tuple(part for path in paths for part in path.split(":") if part)
    return ElfDependencies(interpreter, needed, runpath)


def _file_offset(segments: Sequence[tuple[int, ...]], address: int) -> int:
    for p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align in segments:
        if p_type == PT_LOAD and p_vaddr <= address < p_vaddr + p_filesz:
            return address - p_vaddr + p_offset
    raise ImageError(f"ELF address {address:#x} is in no loaded segment")


def read_dependencies(path: Path) -> ElfDependencies:
    """:func:`parse_dependencies` of a file.

    Raises:
        ImageError: when the file cannot be read or is not ELF64.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from exc
    try:
        return parse_dependencies(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def resolve_libraries(binaries: Iterable[Path],
                      library_dirs: Sequence[Path] = DEFAULT_LIBRARY_DIRS) -> dict[str, Path]:
    """Every shared library (and loader) the binaries need, transitively: soname -> host file.

    The loader appears under its PT_INTERP path (e.g. ``/lib64/ld-linux-x86-64.so.2``).
    ``$ORIGIN`` in a runpath is expanded to the binary's directory.

    Raises:
        ImageError: when a needed library is found in none of the directories.
    """
    found: dict[str, Path] = {}
    pending = [(binary, read_dependencies(binary)) for binary in binaries]
    while pending:
        binary, deps = pending.pop()
        if deps.interpreter and deps.interpreter not in found:
            found[deps.interpreter] = Path(deps.interpreter)
        dirs = [Path(p.replace("$ORIGIN", str(binary.parent))) for p in deps.runpath] + list(library_dirs)
        for soname in deps.needed:
            if soname in found:
                continue
            library = next((d / soname for d in dirs if (d / soname).exists()), None)
            if library is None:
                searched = ", ".join(map(str, dirs))
                raise ImageError(f"{binary}: needed library {soname} not found in {searched}")
            found[soname] = library
            pending.append((library, read_dependencies(library)))
    return found
