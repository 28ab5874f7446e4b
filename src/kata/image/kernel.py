"""Fetch Debian's guest kernel with apt-get download + dpkg-deb -x, never installing it on the host."""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from kata.errors import ImageError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "LZ4_LEGACY_MAGIC",
    "KernelArtifacts",
    "commit_kernel_dir",
    "extract_vmlinux",
    "fetch_kernel",
    "kernel_dir_complete",
    "kernel_release_of",
    "link_guest_kernel",
    "resolve_kernel_package",
    "run_tool",
    "unpack_package",
]

DEFAULT_CACHE_DIR = Path(os.environ.get("KATA_CACHE_DIR", "/var/cache/pykata"))
# Flavour -> Debian metapackage that depends on the current kernel (or, for ``minimal``, the kernel
# source pykata builds its own kernel from: kata.image.kbuild).
FLAVOURS = {"minimal": "linux-source", "cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
DEFAULT_FLAVOUR = "minimal"  # pykata's own build: boots ~1.1 s faster under TCG, has 9p (docs/image.md)
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
KERNEL_DIR_FILES = ("kernel.json", "vmlinuz", "vmlinux")
XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"
# bzImage setup header: offset of the kernel_version pointer (relative to 0x200).
KERNEL_VERSION_FIELD = 0x20E


@dataclass(frozen=True)
class KernelArtifacts:
    """A fetched kernel: compressed and PVH-bootable images, modules and identity."""

    flavour: str
    package: str
    version: str
    release: str
    directory: Path

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def modules(self) -> Path:
        return self.directory / "lib" / "modules" / self.release


def run_tool(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build tool; its stdout, or an ImageError naming it and its last error line.

    Raises:
        ImageError: when the tool is missing or exits non-zero.
    """
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ImageError(f"{argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines
        raise ImageError(f"{' '.join(argv[:2])} failed: {errors[-1].strip()}")
    return proc.stdout


def resolve_kernel_package(flavour: str) -> tuple[str, str]:
    """The concrete ``linux-image-*`` package and version behind the flavour's metapackage.

    Raises:
        ImageError: for an unknown flavour or when apt knows no such package (run apt-get update).
    """
    meta = FLAVOURS.get(flavour)
    if meta is None:
        raise ImageError(f"unknown kernel flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
    show = run_tool(["apt-cache", "show", "--no-all-versions", meta])
    match = re.search(r"^Depends:.*?\b(linux-image-[\w.+-]+)\s*\(=\s*([^)\s]+)\)", show, re.M)
    if match is None:
        raise ImageError(f"{meta}: no linux-image dependency in apt-cache show (run apt-get update)")
    return match.group(1), match.group(2)


def kernel_release_of(bzimage: bytes) -> str:
    """The release (``uname -r``) recorded in a bzImage's setup header.

    Raises:
        ImageError: when the header has no version string.
    """
    if len(bzimage) < KERNEL_VERSION_FIELD + 2 or bzimage[0x202:0x206] != b"HdrS":
        raise ImageError("not a bzImage: no HdrS setup header")
    pointer = int.from_bytes(bzimage[KERNEL_VERSION_FIELD:KERNEL_VERSION_FIELD + 2], "little") + 0x200
    end = bzimage.find(b"\0", pointer)
    if pointer >= len(bzimage) or end < 0:
        raise ImageError("bzImage kernel_version pointer is out of range")
    return bzimage[pointer:end].decode("ascii", "replace").split()[0]


def _extract_xz(data: bytes, start: int, tmp: Path) -> None:
    # The XZ stream is followed by setup bytes: a decompressor object stops at its end.
    tmp.write_bytes(lzma.LZMADecompressor().decompress(data[start:]))


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Write the ELF vmlinux inside an LZ4- (cloud) or XZ- (generic) compressed bzImage to ``out``.

    Raises:
        ImageError: when the payload is neither or does not decompress to an ELF file.
    """
    data = bzimage.read_bytes()
    start = data.find(LZ4_LEGACY_MAGIC)
    xz_start = data.find(XZ_MAGIC)
    tmp = out.with_suffix(".part")
    if xz_start >= 0 and (start < 0 or xz_start < start):
        try:
            _extract_xz(data, xz_start, tmp)
        except lzma.LZMAError as exc:
            raise ImageError(f"{bzimage}: cannot decompress the XZ payload: {exc}") from exc
        _check_elf(bzimage, tmp, out, "")
        return
    if start < 0:
        raise ImageError(f"{bzimage}: no LZ4 payload (kernel not built with CONFIG_KERNEL_LZ4)")
    with tmp.open("wb") as sink:
        # lz4 stops at the end of the legacy frame and complains about the bytes after it.
        proc = subprocess.run(["lz4", "-d", "-c"], input=data[start:], stdout=sink,
                              stderr=subprocess.PIPE, check=False)
    _check_elf(bzimage, tmp, out, f" (lz4 said {proc.stderr!r})")


def _check_elf(bzimage: Path, tmp: Path, out: Path, detail: str) -> None:
    with tmp.open("rb") as fh:
        magic = fh.read(4)
    if magic != ELF_MAGIC:
        tmp.unlink()
        raise ImageError(f"{bzimage}: the decompressed payload is not ELF{detail}")
    tmp.replace(out)


def unpack_package(package: str, version: str, work: Path) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` of ``package`` into ``work``/root (nothing is installed).

    Raises:
        ImageError: when apt or dpkg-deb fail.
    """
    run_tool(["apt-get", "download", "-q", f"{package}={version}"], cwd=work)
    deb = next(work.glob("*.deb"), None)
    if deb is None:
        raise ImageError(f"apt-get download {package} produced no .deb")
    root = work / "root"
    run_tool(["dpkg-deb", "-x", str(deb), str(root)])
    deb.unlink()
    return root


def kernel_dir_complete(directory: Path) -> bool:
    """Whether a cached kernel directory holds what a build leaves (a partial one is made again)."""
    return all((directory / name).is_file() for name in KERNEL_DIR_FILES)


def commit_kernel_dir(stage: Path, target: Path, meta: dict[str, str]) -> None:
    """Write ``kernel.json`` (``meta``) into the staged kernel directory and put it in ``target``'s place."""
    (stage / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    stage.rename(target)


def _store(root: Path, target: Path, meta: dict[str, str]) -> str:
    vmlinuz = next((root / "boot").glob("vmlinuz-*"), None)
    if vmlinuz is None:
        raise ImageError("kernel package has no /boot/vmlinuz-*")
    release = kernel_release_of(vmlinuz.read_bytes())
    stage = target.with_name(target.name + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "lib" / "modules").mkdir(parents=True)
    shutil.copyfile(vmlinuz, stage / "vmlinuz")
    shutil.copytree(root / "lib" / "modules" / release, stage / "lib" / "modules" / release,
                    symlinks=True)
    for extra in ("config", "System.map"):
        src = root / "boot" / f"{extra}-{release}"
        if src.exists():
            shutil.copyfile(src, stage / extra)
    extract_vmlinux(stage / "vmlinuz", stage / "vmlinux")
    # The .deb ships no modules.dep (postinst makes it); the initrd builder resolves through it.
    run_tool(["depmod", "-b", str(stage), release])
    commit_kernel_dir(stage, target, {**meta, "release": release})
    return release


def fetch_kernel(flavour: str = DEFAULT_FLAVOUR, cache_dir: Path = DEFAULT_CACHE_DIR) -> KernelArtifacts:
    """Fetch (or reuse from the cache) the current Debian kernel of ``flavour``; build it for ``minimal``.

    Raises:
        ImageError: when apt, dpkg-deb, lz4 or the kernel build fail, or the package is not what we expect.
    """
    if flavour == "minimal":
        from kata.image.kbuild import build_minimal_kernel

        target = build_minimal_kernel(cache_dir)
    else:
        package, version = resolve_kernel_package(flavour)
        target = cache_dir / "kernels" / f"{package}_{version}"
        if not kernel_dir_complete(target):  # a partial directory (interrupted or pruned) is fetched again
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as work:
                root = unpack_package(package, version, Path(work))
                _store(root, target, {"flavour": flavour, "package": package, "version": version})
    meta = json.loads((target / "kernel.json").read_text())
    return KernelArtifacts(flavour=meta["flavour"], package=meta["package"], version=meta["version"],
                           release=meta["release"], directory=target)


def _replace_symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def link_guest_kernel(kernel: KernelArtifacts, guest_dir: Path) -> None:
    """Point ``guest_dir``/vmlinux and vmlinuz (the configured defaults) at ``kernel``."""
    guest_dir.mkdir(parents=True, exist_ok=True)
    _replace_symlink(guest_dir / "vmlinux", kernel.vmlinux)
    _replace_symlink(guest_dir / "vmlinuz", kernel.vmlinuz)
    (guest_dir / "kernel.json").write_text(json.dumps({**asdict(kernel), "directory": str(kernel.directory)},
                                                      indent=2) + "\n")
