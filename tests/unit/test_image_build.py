"""The initrd builder end to end (no VM): contents, bytecode, caching. Needs the fetched kernel."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from kata.image.initrd import build_initrd
from kata.image.kernel import DEFAULT_CACHE_DIR, LZ4_LEGACY_MAGIC, KernelArtifacts, fetch_kernel

pytestmark = pytest.mark.skipif(
    not (Path("/usr/bin/python3.11").exists() and Path("/bin/busybox").exists() and shutil.which("cpio")
         and any((DEFAULT_CACHE_DIR / "kernels").glob("*/kernel.json"))),
    reason="needs python3.11, busybox-static, cpio and a fetched kernel (python -m kata.image kernel)")


@pytest.fixture(scope="module")
def kernel() -> KernelArtifacts:
    return fetch_kernel("cloud", DEFAULT_CACHE_DIR)


def _list(image: Path) -> list[str]:
    data = image.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == LZ4_LEGACY_MAGIC:
        data = subprocess.run(["lz4", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def test_build_contents_and_cache(kernel: KernelArtifacts, tmp_path: Path) -> None:
    first = build_initrd(kernel, tmp_path)
    assert not first.cached
    names = set(_list(first.path))
    for required in ("init", "usr/bin/python3.11", "usr/bin/busybox", "usr/bin/sh", "usr/bin/poweroff",
                     "usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libc.so.6",
                     "usr/lib/python3.11/os.py", "usr/lib/kata-agent/kata/guest/init.pyc",
                     "usr/lib/kata-agent/codecache.marshal",
                     "usr/lib/kata-agent/google/_upb/_message.abi3.so", "etc/kata-agent/modules",
                     "etc/kata-agent/image", "dev/console", "dev/urandom"):
        assert required in names, required
    assert not any(name.startswith("usr/lib/python3.11/asyncio") for name in names)
    # Sourceless: the guest imports the .pyc files, never a source it could recompile.
    assert not [n for n in names if n.endswith(".py") and n != "usr/lib/python3.11/os.py"]
    assert not any("__pycache__" in name for name in names)
    assert not any("kata/config" in name or "kata/cli" in name for name in names)
    modules = [n for n in names if n.endswith(".ko")]
    assert any(n.endswith("/virtio_console.ko") for n in modules)
    assert first.facts["stdlib_files"] and isinstance(first.facts["modules"], list)

    again = build_initrd(kernel, tmp_path)
    assert again.cached and again.key == first.key and again.path == first.path

    assert first.facts["compression"] == "lz4"
    gz = build_initrd(kernel, tmp_path, compression="gzip")
    assert gz.key != first.key
    assert set(_list(gz.path)) == names
