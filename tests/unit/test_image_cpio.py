"""The newc cpio writer: format details, and what Debian's cpio extracts from it."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kata.image.cpio import CpioWriter, write_tree


def _entries(data: bytes) -> list[tuple[str, int, bytes]]:
    """A minimal newc reader: (name, mode, data) per entry, checking alignment on the way."""
    found: list[tuple[str, int, bytes]] = []
    offset = 0
    while True:
        assert offset % 4 == 0
        header = data[offset:offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = offset + 110 + namesize
        name = data[offset + 110:name_end - 1].decode()
        start = name_end + (-name_end % 4)
        body = data[start:start + size]
        offset = start + size + (-(start + size) % 4)
        if name == "TRAILER!!!":
            assert offset == len(data)
            return found
        found.append((name, mode, body))


def test_entries_round_trip() -> None:
    sink = io.BytesIO()
    writer = CpioWriter(sink)
    writer.add_directory("etc")
    writer.add_bytes("etc/hostname", b"kata\n", 0o644)
    writer.add_symlink("bin", "usr/bin")
    writer.add_char_device("dev/console", 5, 1)
    writer.close()
    entries = _entries(sink.getvalue())
    assert [(n, stat.S_IFMT(m)) for n, m, _ in entries] == [
        ("etc", stat.S_IFDIR), ("etc/hostname", stat.S_IFREG), ("bin", stat.S_IFLNK),
        ("dev/console", stat.S_IFCHR)]
    assert entries[1][2] == b"kata\n"
    assert entries[2][2] == b"usr/bin"
    assert writer.written == len(sink.getvalue())


def test_output_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    outputs = []
    for _ in range(2):
        sink = io.BytesIO()
        writer = CpioWriter(sink)
        write_tree(writer, tmp_path)
        writer.close()
        outputs.append(sink.getvalue())
        os.utime(tmp_path / "a", (12345, 12345))
    assert outputs[0] == outputs[1]


def test_tree_parents_come_first_and_links_are_kept(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(10))
    (tree / "usr" / "bin" / "busybox").chmod(0o755)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "usr" / "bin" / "sh").symlink_to("busybox")
    sink = io.BytesIO()
    writer = CpioWriter(sink)
    assert write_tree(writer, tree) == 5
    writer.close()
    names = [n for n, _, _ in _entries(sink.getvalue())]
    assert names == ["bin", "usr", "usr/bin", "usr/bin/busybox", "usr/bin/sh"]
    modes = {n: m for n, m, _ in _entries(sink.getvalue())}
    assert stat.S_IMODE(modes["usr/bin/busybox"]) == 0o755


def test_write_tree_refuses_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="fifo"):
        write_tree(CpioWriter(io.BytesIO()), tmp_path)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs Debian's cpio")
def test_debian_cpio_extracts_it(tmp_path: Path) -> None:
    archive = tmp_path / "img.cpio"
    with archive.open("wb") as fh:
        writer = CpioWriter(fh)
        writer.add_directory("etc")
        writer.add_bytes("etc/odd-size", b"abcde", 0o600)
        writer.add_file("etc/self", Path(__file__), 0o644)
        writer.add_symlink("link", "etc/odd-size")
        writer.close()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "-F", str(archive)], cwd=out, check=True)
    assert (out / "etc" / "odd-size").read_bytes() == b"abcde"
    assert stat.S_IMODE((out / "etc" / "odd-size").stat().st_mode) == 0o600
    assert (out / "etc" / "self").read_bytes() == Path(__file__).read_bytes()
    assert os.readlink(out / "link") == "etc/odd-size"
