"""Build the guest initrd (busybox, python3.11, protobuf, the agent, kernel modules), cached by its inputs."""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kata.errors import ImageError
from kata.image import cache, python_runtime, tree
from kata.image.cpio import CpioWriter, write_tree
from kata.image.kernel import KernelArtifacts
from kata.image.modules import GUEST_MODULES, resolve_kernel_modules
from kata.image.progress import Reporter

__all__ = [
    "BUILDER_VERSION",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "INITRD_NAME",
    "InitrdBuild",
    "build_initrd",
    "build_inputs",
    "debian_versions",
    "link_initrd",
    "stage_tree",
    "write_initrd",
]

# Bump when the image layout changes in a way the hashed builder sources do not show.
BUILDER_VERSION = "1"
INITRD_NAME = "kata-initrd.img"
# Measured under TCG (docs/image.md, bench/boot_ratio.py): lz4 (10 MB) boots as fast as or faster than
# no compression (24 MB); gzip (8.6 MB) is ~0.2-0.35 s slower, its inflating is slow under TCG.
COMPRESSIONS = ("none", "gzip", "lz4")
DEFAULT_COMPRESSION = "lz4"
# Host packages whose files go into the image (their versions key the cache).
DEBIAN_PACKAGES = (
    "busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
    "libstdc++6", "libgcc-s1", "libffi8", "zlib1g", "libexpat1",
)
KEEP_BUILDS = 3
# Device nodes needed before PID 1 mounts devtmpfs over /dev: the kernel opens /dev/console for
# PID 1's stdio, and Python's start-up reads /dev/urandom when the entropy pool is not ready yet.
EARLY_DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666), ("dev/urandom", 1, 9, 0o666))


@dataclass(frozen=True)
class InitrdBuild:
    """A built (or reused) initrd and its recorded facts (build.json)."""

    key: str
    path: Path
    cached: bool
    facts: Mapping[str, object]


def debian_versions(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` ("absent" for one not installed)."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Status}\n",
                           *packages], capture_output=True, text=True, check=False)
    found = {}
    for line in proc.stdout.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if status == "installed":
            found[name.split(":")[0]] = version
    return {name: found.get(name, "absent") for name in packages}


def _builder_hash() -> str:
    here = Path(__file__).parent
    return cache.hash_files(here, [p for p in here.glob("*.py") if p.name != "__main__.py"])


def build_inputs(kernel: KernelArtifacts, compression: str) -> dict[str, str]:
    """Everything the image is made from; its hash is the cache key.

    Raises:
        ImageError: when protobuf or pyroute2 is not installed.
    """
    kata_dir, kata_files = python_runtime.kata_guest_sources()
    _, protobuf_version = python_runtime.protobuf_source()
    _, pyroute2_version = python_runtime.pyroute2_source()
    inputs = {
        "kernel": f"{kernel.package}={kernel.version}",
        "kernel_release": kernel.release,
        "protobuf": protobuf_version,
        "pyroute2": pyroute2_version,
        "kata_sources": cache.hash_files(kata_dir, kata_files),
        "builder": f"{BUILDER_VERSION}:{_builder_hash()}",
        "compression": compression,
    }
    inputs.update({f"deb:{name}": version for name, version in debian_versions().items()})
    return inputs


def _compress(raw: Path, out: Path, compression: str) -> None:
    if compression == "none":
        raw.replace(out)
        return
    if compression == "gzip":
        with raw.open("rb") as src, out.open("wb") as sink, \
                gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as gz:
            while chunk := src.read(1 << 20):
                gz.write(chunk)
    elif compression == "lz4":
        # The kernel's initramfs unpacker only reads the legacy LZ4 frame format (-l).
        proc = subprocess.run(["lz4", "-l", "-9", "-q", "-f", str(raw), str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageError(f"lz4 failed: {proc.stderr.strip()}")
    else:
        raise ImageError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    raw.unlink()


def write_initrd(root: Path, out: Path, compression: str) -> int:
    """Archive the tree at ``root`` as a newc cpio (plus /dev/console) and compress it; returns entries.

    Raises:
        ImageError: for an unknown compression or a failing compressor.
    """
    raw = out.with_name(out.name + ".cpio")
    with raw.open("wb") as fh:
        sink: BinaryIO = fh
        writer = CpioWriter(sink)
        count = write_tree(writer, root)
        for name, major, minor, mode in EARLY_DEVICES:
            if not (root / name).exists():
                writer.add_char_device(name, major, minor, mode)
                count += 1
        writer.close()
    _compress(raw, out, compression)
    return count


def stage_tree(root: Path, kernel: KernelArtifacts, key: str, reporter: Reporter) -> dict[str, object]:
    facts: dict[str, object] = {}
    with reporter.step("base layout and busybox") as step:
        tree.stage_base(root)
        step.detail = f"{tree.stage_busybox(root)} applets"
    with reporter.step("kernel modules") as step:
        resolution = resolve_kernel_modules(kernel.modules, GUEST_MODULES)
        facts["modules"] = tree.stage_modules(root, kernel.modules, kernel.release, resolution)
        facts["modules_builtin"] = list(resolution.builtin)
        facts["modules_missing"] = list(resolution.missing)
        step.detail = f"{len(resolution.load_order)} to load, {len(resolution.builtin)} built in"
        if resolution.missing:
            reporter.note(f"not in kernel {kernel.release}: {', '.join(resolution.missing)}")
    with reporter.step("python runtime (import probe)") as step:
        runtime = python_runtime.stage_python(root)
        facts["stdlib_files"] = len(runtime.stdlib_files)
        facts["unusable_guest_modules"] = list(runtime.unusable_modules)
        step.detail = f"{len(runtime.stdlib_files)} stdlib files, protobuf {runtime.protobuf_version}"
        if runtime.unusable_modules:
            unusable = ", ".join(runtime.unusable_modules)
            reporter.note(f"not importable in the guest (they import asyncio): {unusable}")
    with reporter.step("shared libraries") as step:
        libraries = tree.stage_libraries(root, runtime.extension_modules)
        facts["libraries"] = libraries
        step.detail = f"{len(libraries)} libraries"
    with reporter.step("byte-compile") as step:
        python_runtime.compile_tree(root)
        facts["sources_removed"] = python_runtime.strip_sources(root)
        step.detail = f"{python_runtime.check_bytecode(root)} unchecked-hash .pyc, sources removed"
    with reporter.step("code cache") as step:
        facts["codecache_sources"] = python_runtime.record_codecache(root, runtime.guest_modules)
        step.detail = f"{facts['codecache_sources']} generated sources precompiled"
    tree.write_image_info(root, {"key": key, "kernel": kernel.release, "flavour": kernel.flavour})
    return facts


def build_initrd(kernel: KernelArtifacts, cache_dir: Path, *, compression: str = DEFAULT_COMPRESSION,
                 force: bool = False, reporter: Reporter | None = None) -> InitrdBuild:
    """The initrd for ``kernel``: from the cache when its inputs are unchanged, else built.

    Raises:
        ImageError: when an input is missing or a build step fails.
    """
    report = reporter or Reporter()
    if compression not in COMPRESSIONS:
        raise ImageError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    with report.step("hash inputs") as step:
        inputs = build_inputs(kernel, compression)
        key = cache.cache_key(inputs)
        step.detail = key
    store = cache.BuildCache(cache_dir / "initrd")
    with store.locked():
        facts = store.lookup(key)
        if facts is not None and not force:
            report.note(f"cached: {store.entry(key) / INITRD_NAME}")
            return InitrdBuild(key, store.entry(key) / INITRD_NAME, True, facts)
        started = time.monotonic()
        with store.staging(key) as out, tempfile.TemporaryDirectory(dir=store.root) as work:
            root = Path(work) / "root"
            root.mkdir()
            facts = stage_tree(root, kernel, key, report)
            with report.step("cpio archive") as step:
                entries = write_initrd(root, out / INITRD_NAME, compression)
                size = (out / INITRD_NAME).stat().st_size
                step.detail = f"{entries} entries, {size / 1e6:.1f} MB ({compression})"
            facts.update(key=key, inputs=inputs, size=size, entries=entries, compression=compression,
                         seconds=round(time.monotonic() - started, 2), steps=dict(report.timings),
                         created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            cache.write_result(out, facts)
    return InitrdBuild(key, store.entry(key) / INITRD_NAME, False, facts)


def link_initrd(build: InitrdBuild, link: Path) -> None:
    """Atomically point ``link`` (the configured initrd path) at the build; prune older builds.

    Pruning happens here, not in :func:`build_initrd`, so a build nobody links (a test's) never
    removes the one the configuration points at.
    """
    cache.replace_symlink(link, build.path)
    os.utime(build.path.parent)
    store = cache.BuildCache(build.path.parent.parent)
    store.prune(KEEP_BUILDS, protect=[build.key, *_linked_builds(link, store.root)])


def _linked_builds(link: Path, root: Path) -> list[str]:
    """The builds that the initrd links of ``link``'s sibling guest dirs point at (another flavour's, e.g.
    guest-generic beside guest): rebuilding one flavour must not prune the initrd another one uses."""
    linked = []
    for sibling in link.parent.parent.glob(f"*/{link.name}"):
        target = Path(os.path.realpath(sibling))
        if target.parent.parent == root.resolve():
            linked.append(target.parent.name)
    return linked
