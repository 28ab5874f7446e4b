"""Processes with a terminal: controlling tty, /dev/console, window size, EOF with ^D."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata.guest.runtime import ContainerRuntime, TerminalError
from kata.oci import Box
from tests.agent.support import drain, make_spec


def read_until(runtime: ContainerRuntime, marker: bytes) -> bytes:
    output = b""
    while marker not in output:
        chunk = runtime.read_stdout("c1", "", 1024)
        assert chunk, f"EOF before {marker!r}: {output!r}"
        output += chunk
    return output


def test_terminal_init_has_a_controlling_tty_and_console_size(
    runtime: ContainerRuntime, rootfs: Path
) -> None:
    spec = make_spec(rootfs, "sh", "-c", "test -t 0 && test -t 1 && tty; stty size; echo err >&2",
                     terminal=True, console_size=Box(height=30, width=100))
    runtime.create_container("c1", spec)
    runtime.start_container("c1")
    assert drain(runtime.read_stdout, "c1", "") == b"/dev/console\r\n30 100\r\nerr\r\n"
    assert runtime.read_stderr("c1", "", 100) == b""
    assert runtime.wait_process("c1", "", timeout=10) == 0


def test_resize_sets_the_window_size(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "sh", "-c", "read line; stty size", terminal=True))
    runtime.start_container("c1")
    runtime.resize_tty("c1", "", 40, 120)
    runtime.write_stdin("c1", "", b"go\n")
    assert read_until(runtime, b"40 120\r\n").endswith(b"40 120\r\n")
    assert runtime.wait_process("c1", "", timeout=10) == 0


def test_close_stdin_sends_eof_to_a_terminal(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "cat", terminal=True))
    runtime.start_container("c1")
    runtime.write_stdin("c1", "", b"abc\n")
    read_until(runtime, b"abc\r\nabc\r\n")  # the terminal's echo, then cat's copy
    runtime.close_stdin("c1", "")
    assert runtime.wait_process("c1", "", timeout=10) == 0


def test_resize_without_a_terminal_fails(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "true"))
    with pytest.raises(TerminalError, match="resize: the process has no terminal"):
        runtime.resize_tty("c1", "", 10, 10)
