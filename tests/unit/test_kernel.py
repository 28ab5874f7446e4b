"""Guest kernel helpers: bzImage version header and vmlinux extraction."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest

from kata.errors import ImageError
from kata.image.kernel import LZ4_LEGACY_MAGIC, extract_vmlinux, kernel_release_of


def fake_bzimage(version: bytes, payload: bytes = b"") -> bytes:
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300 - 0x200).to_bytes(2, "little")
    image[0x300:0x300 + len(version) + 1] = version + b"\0"
    return bytes(image) + payload


def test_release_is_read_from_the_setup_header() -> None:
    header = fake_bzimage(b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP")
    assert kernel_release_of(header) == "6.1.0-56-cloud-amd64"


def test_a_file_without_setup_header_is_refused() -> None:
    with pytest.raises(ImageError, match="not a bzImage"):
        kernel_release_of(b"\x7fELF" + bytes(1024))


def test_vmlinux_is_the_lz4_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    packed = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True).stdout
    assert packed.startswith(LZ4_LEGACY_MAGIC)
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(fake_bzimage(b"6.1.0") + packed + b"trailing setup bytes")
    extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf


def test_uncompressed_or_unknown_payload_is_refused(tmp_path: Path) -> None:
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(fake_bzimage(b"6.1.0") + b"\x1f\x8b" + bytes(64))
    with pytest.raises(ImageError, match="no LZ4 payload"):
        extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_vmlinux_from_an_xz_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(fake_bzimage(b"6.1.0") + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"setup tail")
    extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf


def test_corrupt_xz_payload_is_refused(tmp_path: Path) -> None:
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(fake_bzimage(b"6.1.0") + b"\xfd7zXZ\x00" + bytes(64))
    with pytest.raises(ImageError, match="cannot decompress the XZ payload"):
        extract_vmlinux(bzimage, tmp_path / "vmlinux")
