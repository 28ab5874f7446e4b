"""The guest's Python: Debian's python3.11, the stdlib modules the agent imports, protobuf, kata parts.

Which stdlib modules go in is measured, never listed: the guest's own python3.11 imports every
guest-side kata module and every module those import anywhere (function-level imports included,
``if TYPE_CHECKING:`` blocks excluded), and what ends up in ``sys.modules`` is copied.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import kata
from kata.errors import ImageError
from kata.guest import codecache

__all__ = [
    "AGENT_LIB_DIR",
    "CODECACHE_FILE",
    "ENTRY_MODULE",
    "FORBIDDEN_IN_GUEST",
    "GUEST_PYTHON",
    "KATA_GUEST_PARTS",
    "STDLIB_DIR",
    "PythonRuntime",
    "check_bytecode",
    "compile_tree",
    "imports_of",
    "kata_guest_sources",
    "poisoned_modules",
    "protobuf_source",
    "prune_unloaded",
    "pyroute2_source",
    "record_codecache",
    "stage_python",
    "strip_sources",
]

GUEST_PYTHON = Path("/usr/bin/python3.11")
STDLIB_DIR = Path("/usr/lib/python3.11")
# Where the agent's own packages (kata, google.protobuf) live in the guest; /init puts it on sys.path.
AGENT_LIB_DIR = Path("/usr/lib/kata-agent")
ENTRY_MODULE = "kata.guest.init"
# Dataclass and namedtuple code recorded at build time (kata.guest.codecache).
CODECACHE_FILE = Path(codecache.CACHE_FILE)
# Parts of the kata package copied into the guest (relative to the package directory).
KATA_GUEST_PARTS = ("__init__.py", "errors.py", "guest", "ttrpc", "protocols", "oci")
PROTOBUF_PARTS = ("google/protobuf", "google/_upb")
# pyroute2 goes in whole, then loses every module the import probe did not load: the guest imports
# only its rtnetlink message classes (kata.guest.netlink.rtnl), ~30 of its ~230 modules.
PYROUTE2_PARTS = ("pyroute2",)
SKIPPED_DIRS = frozenset({"__pycache__", "testdata"})
# Importing these costs too much under TCG (asyncio: ~0.6 s); a guest module that does is unusable.
FORBIDDEN_IN_GUEST = frozenset({"asyncio"})
# Python's start-up looks for os.py to find its prefix (os itself is frozen into the binary).
STDLIB_LANDMARKS = ("os.py",)
PROBE_SCRIPT = Path(__file__).with_name("_probe.py")
# .pyc header flags (PEP 552): bit 0 hash-based, bit 1 check_source.
UNCHECKED_HASH_FLAGS = 0b01


@dataclass(frozen=True)
class PythonRuntime:
    """What :func:`stage_python` put into the tree."""

    stdlib_files: tuple[str, ...]
    extension_modules: tuple[Path, ...]
    guest_modules: tuple[str, ...]
    unusable_modules: tuple[str, ...]
    protobuf_version: str


def _sources_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        found += [Path(dirpath) / name for name in sorted(filenames)
                  if name.endswith((".py", ".so"))]
    return found


def kata_guest_sources(kata_dir: Path | None = None) -> tuple[Path, list[Path]]:
    """The kata package directory and the source files of the parts the guest carries."""
    root = kata_dir or Path(kata.__file__).parent
    return root, [f for part in KATA_GUEST_PARTS for f in _sources_under(root / part)]


def protobuf_source() -> tuple[Path, str]:
    """The site directory holding our (pinned) ``google.protobuf``, and its version.

    Raises:
        ImageError: when protobuf is not installed next to pykata.
    """
    spec = importlib.util.find_spec("google.protobuf")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("google.protobuf is not installed in pykata's environment")
    site = Path(next(iter(spec.submodule_search_locations))).parent.parent
    return site, importlib.metadata.version("protobuf")


def pyroute2_source() -> tuple[Path, str]:
    """The site directory holding our (pinned) ``pyroute2``, and its version.

    Raises:
        ImageError: when pyroute2 is not installed next to pykata.
    """
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("pyroute2 is not installed in pykata's environment")
    site = Path(next(iter(spec.submodule_search_locations))).parent
    return site, importlib.metadata.version("pyroute2")


def prune_unloaded(lib_dir: Path, package: str, loaded: Mapping[str, str]) -> int:
    """Delete the modules of ``package`` under ``lib_dir`` that the probe did not load; returns how many.

    For vendored packages the guest uses a small part of: their other modules would only cost space.
    """
    origins = {Path(origin) for origin in loaded.values()}
    removed = 0
    for source in _sources_under(lib_dir / package):
        if source not in origins:
            source.unlink()
            removed += 1
    for dirpath, _, _ in sorted(os.walk(lib_dir / package), key=lambda entry: -len(entry[0])):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    return removed


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, package: str) -> None:
        self.package = package
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
        if name != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parent = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{parent}.{base}" if base else parent
        self.names.add(base)
        # ``from pkg import name``: name may be a submodule; the probe is told it may not be.
        self.names.update(f"?{base}.{alias.name}" for alias in node.names if alias.name != "*")


def imports_of(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names a module's code may import at run time (``?name``: maybe an attribute).

    Raises:
        SyntaxError: when ``source`` does not parse.
    """
    collector = _ImportCollector(module if is_package else module.rpartition(".")[0])
    collector.visit(ast.parse(source))
    return collector.names


def poisoned_modules(imports: Mapping[str, set[str]], forbidden: frozenset[str]) -> set[str]:
    """Modules that import a forbidden module: directly, through another module here, or a parent package."""
    bad: set[str] = set()
    changed = True
    while changed:
        changed = False
        for module, names in imports.items():
            if module in bad:
                continue
            # ``from pkg import name`` imports a module when pkg.name is one of ours.
            targets = {name.lstrip("?") for name in names if not name.startswith("?") or name[1:] in imports}
            parent = module.rpartition(".")[0]
            if (any(t.split(".")[0] in forbidden for t in targets) or targets & bad
                    or (parent in imports and parent in bad)):
                bad.add(module)
                changed = True
    return bad


def _module_name(lib_dir: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(lib_dir).with_suffix("")
    is_package = rel.name == "__init__"
    parts = rel.parts[:-1] if is_package else rel.parts
    return ".".join(parts), is_package


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env={"LC_ALL": "C"})
    except OSError as exc:
        raise ImageError(f"{what}: {argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        raise ImageError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def probe(python: Path, lib_dir: Path, names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Import ``names`` in the guest's python (as the guest starts it): loaded modules -> origin, errors.

    Raises:
        ImageError: when the probe itself cannot run.
    """
    # -B: the probe must not leave timestamp .pyc files behind for compileall to keep.
    argv = [str(python), "-I", "-S", "-B", str(PROBE_SCRIPT), str(lib_dir), *sorted(names)]
    out = _run(argv, "import probe")
    loaded: dict[str, str] = {}
    errors: dict[str, str] = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if fields[0] == "!error":
            errors[fields[1]] = fields[2]
        else:
            loaded[fields[0]] = fields[1]
    return loaded, errors


def _stage_packages(root: Path) -> tuple[dict[str, set[str]], str]:
    """Copy the kata parts and protobuf into the tree; scan the kata modules' imports."""
    lib_dir = root / AGENT_LIB_DIR.relative_to("/")
    kata_dir, kata_files = kata_guest_sources()
    imports: dict[str, set[str]] = {}
    for src in kata_files:
        dst = lib_dir / "kata" / src.relative_to(kata_dir)
        _copy(src, dst)
        if src.suffix == ".py":
            module, is_package = _module_name(lib_dir, dst)
            imports[module] = imports_of(src.read_text(), module, is_package=is_package)
    site, version = protobuf_source()
    for part in PROTOBUF_PARTS:
        for src in _sources_under(site / part):
            _copy(src, lib_dir / src.relative_to(site))
    site, _ = pyroute2_source()
    for part in PYROUTE2_PARTS:
        for src in _sources_under(site / part):
            _copy(src, lib_dir / src.relative_to(site))
    return imports, version


def _copy_stdlib(root: Path, python: Path, loaded: Mapping[str, str]) -> tuple[list[str], list[Path]]:
    stdlib = STDLIB_DIR.as_posix() + "/"
    agent = (root / AGENT_LIB_DIR.relative_to("/")).as_posix() + "/"
    files = {STDLIB_DIR / name for name in STDLIB_LANDMARKS}
    extensions = [python]
    for name, origin in loaded.items():
        if origin in ("built-in", "frozen", "None"):
            continue
        if origin.startswith(agent):
            if origin.endswith(".so"):
                extensions.append(Path(origin))
            continue
        if not origin.startswith(stdlib):
            raise ImageError(f"guest module {name} comes from {origin}, outside the stdlib and the image")
        files.add(Path(origin))
    for path in files:
        _copy(path, root / path.relative_to("/"))
        if path.suffix == ".so":
            extensions.append(root / path.relative_to("/"))
    # Start-up checks for lib-dynload to find its exec prefix, even when no extension is loaded.
    (root / STDLIB_DIR.relative_to("/") / "lib-dynload").mkdir(parents=True, exist_ok=True)
    _copy(python, root / python.relative_to("/"))
    return sorted(str(f) for f in files), extensions


def stage_python(root: Path, python: Path = GUEST_PYTHON) -> PythonRuntime:
    """Put the guest Python runtime into the tree at ``root`` (shared libraries excepted).

    Raises:
        ImageError: when python3.11 is missing, a guest module imports a forbidden module or
            something that is not in the image, or the probe fails.
    """
    if not python.exists():
        raise ImageError(f"{python} not found (apt-get install python3.11)")
    imports, version = _stage_packages(root)
    poisoned = poisoned_modules(imports, FORBIDDEN_IN_GUEST)
    if ENTRY_MODULE not in imports:
        raise ImageError(f"the guest entry module {ENTRY_MODULE} is missing from the kata package")
    bad_guest = sorted(m for m in poisoned if m.startswith("kata.guest"))
    if bad_guest:
        forbidden = ", ".join(sorted(FORBIDDEN_IN_GUEST))
        raise ImageError(f"guest modules import {forbidden}: {', '.join(bad_guest)}")
    usable = sorted(set(imports) - poisoned)
    names = set(usable).union(*(imports[m] for m in usable))
    names = {n for n in names if n.lstrip("?").split(".")[0] not in FORBIDDEN_IN_GUEST}
    lib_dir = root / AGENT_LIB_DIR.relative_to("/")
    loaded, errors = probe(python, lib_dir, names)
    if errors:
        culprits = {name: sorted(m for m in usable if {name, f"?{name}"} & imports[m] or m == name)
                    for name in errors}
        detail = "; ".join(f"{name} (imported by {', '.join(culprits[name]) or '?'}): {msg}"
                           for name, msg in sorted(errors.items()))
        raise ImageError(f"guest modules import what the image cannot hold: {detail}")
    leaked = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_GUEST)
    if leaked:
        raise ImageError(f"guest imports pull in forbidden modules: {', '.join(leaked)}")
    for part in PYROUTE2_PARTS:
        prune_unloaded(lib_dir, part, loaded)
    stdlib_files, extensions = _copy_stdlib(root, python, loaded)
    return PythonRuntime(tuple(stdlib_files), tuple(extensions), tuple(usable), tuple(sorted(poisoned)),
                         version)


def compile_tree(root: Path, python: Path = GUEST_PYTHON) -> None:
    """Byte-compile the tree's Python files with the guest's python, as they will be seen in the guest.

    unchecked-hash .pyc files are used without looking at the source's mtime, so the guest
    never recompiles, whatever timestamps the archive gives the files. They are written next to
    their sources (``-b``), which :func:`strip_sources` then removes.

    Raises:
        ImageError: when compileall fails.
    """
    # -f: recompile even where a .pyc looks current (a stray timestamp .pyc is recompiled on every boot).
    _run([str(python), "-I", "-m", "compileall", "-q", "-f", "-b", "-j", "0", "--invalidation-mode",
          "unchecked-hash", "-s", str(root), "-p", "/", *map(str, _python_dirs(root))], "compileall")


def _python_dirs(root: Path) -> tuple[Path, Path]:
    return root / STDLIB_DIR.relative_to("/"), root / AGENT_LIB_DIR.relative_to("/")


def _pyc_flags(pyc: Path) -> int:
    try:
        with pyc.open("rb") as fh:
            return int.from_bytes(fh.read(8)[4:8], "little")
    except OSError:
        return -1


def strip_sources(root: Path) -> int:
    """Delete every .py that has its .pyc beside it (start-up landmarks stay); returns how many.

    The guest then imports the .pyc files themselves (sourceless): about 3 MB less to unpack at
    every boot (~30 ms per MB under TCG), no source to look for, no way to recompile. Tracebacks
    in the guest's log show file and line, without the source text.
    """
    landmarks = {root / STDLIB_DIR.relative_to("/") / name for name in STDLIB_LANDMARKS}
    removed = 0
    for base in _python_dirs(root):
        for source in base.rglob("*.py"):
            if source not in landmarks and _pyc_flags(source.with_suffix(".pyc")) == UNCHECKED_HASH_FLAGS:
                source.unlink()
                removed += 1
    return removed


def record_codecache(root: Path, modules: Iterable[str], python: Path = GUEST_PYTHON) -> int:
    """Write the guest's code cache (kata.guest.codecache) by importing ``modules`` from the tree.

    Run with the guest's python3.11, so the marshalled code objects are the ones it would compile.
    Returns the number of recorded sources.

    Raises:
        ImageError: when the recorder cannot run.
    """
    lib_dir = root / AGENT_LIB_DIR.relative_to("/")
    out = root / CODECACHE_FILE.relative_to("/")
    program = (f"import sys; sys.path.insert(0, {str(lib_dir)!r}); from kata.guest import codecache; "
               "sys.exit(codecache.main(sys.argv[1:]))")
    text = _run([str(python), "-I", "-S", "-B", "-c", program, str(out), *sorted(modules)], "code cache")
    first = text.split(maxsplit=1)
    return int(first[0]) if first and first[0].isdigit() else 0


def check_bytecode(root: Path) -> int:
    """Check that every module under the tree's Python dirs is an unchecked-hash .pyc; returns the count.

    Raises:
        ImageError: naming the first modules that are sources only or whose .pyc checks its source
            (the guest would compile them at every boot).
    """
    bad = []
    count = 0
    for base in _python_dirs(root):
        for module in sorted({*base.rglob("*.py"), *base.rglob("*.pyc")}):
            if module.suffix == ".py" and module.with_suffix(".pyc").exists():
                continue  # a landmark kept beside its .pyc
            if module.suffix == ".py" or _pyc_flags(module) != UNCHECKED_HASH_FLAGS:
                bad.append(str(module.relative_to(root)))
            count += 1
    if bad:
        raise ImageError(f"{len(bad)} modules lack an unchecked-hash .pyc, e.g. {', '.join(sorted(bad)[:5])}")
    return count
