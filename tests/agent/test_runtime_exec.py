"""Exec'd processes: they join the running container's namespaces and have their own stdio and status."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

from kata.errors import StateError
from kata.guest.runtime import (
    ContainerRuntime,
    ExecError,
    ProcessExistsError,
    ProcessNotFoundError,
    ProcessState,
)
from kata.oci import User
from tests.agent.support import exec_process, make_spec, run_exec


@pytest.fixture
def sleeping(runtime: ContainerRuntime, rootfs: Path) -> ContainerRuntime:
    """A running container "c1" whose init sleeps, hostname "box"."""
    runtime.create_container("c1", replace(make_spec(rootfs, "sleep", "60"), hostname="box"))
    runtime.start_container("c1")
    return runtime


def test_exec_sees_the_pid_namespace_and_hostname(sleeping: ContainerRuntime) -> None:
    script = "hostname; cat /proc/1/cmdline; echo; echo $$"
    result = run_exec(sleeping, "c1", "e1", exec_process("sh", "-c", script))
    hostname, init_cmdline, own_pid = result.stdout.splitlines()
    assert (result.status, hostname, init_cmdline) == (0, "box", "sleep\x0060\x00")
    assert int(own_pid) > 1


def test_exec_runs_in_the_container_root_and_cwd(sleeping: ContainerRuntime, rootfs: Path) -> None:
    (rootfs / "marker").write_text("inside\n")
    result = run_exec(sleeping, "c1", "e1", replace(exec_process("sh", "-c", "pwd; cat /marker"), cwd="/tmp"))
    assert result.stdout == "/tmp\ninside\n"


def test_exec_status_user_and_stderr(sleeping: ContainerRuntime) -> None:
    process = replace(exec_process("sh", "-c", "id -u; echo oops >&2; exit 3"), user=User(uid=123, gid=45))
    result = run_exec(sleeping, "c1", "e1", process)
    assert (result.status, result.stdout, result.stderr) == (3, "123\n", "oops\n")


def test_an_exec_is_forgotten_once_waited_and_read_to_eof(sleeping: ContainerRuntime) -> None:
    sleeping.exec_process("c1", "e1", exec_process("cat"))
    assert sleeping.process_info("c1", "e1").state is ProcessState.RUNNING
    sleeping.close_stdin("c1", "e1")
    assert sleeping.wait_process("c1", "e1", timeout=10) == 0
    info = sleeping.process_info("c1", "e1")  # output not read yet: still known
    assert (info.state, info.exit_status) == (ProcessState.EXITED, 0)
    assert sleeping.read_stdout("c1", "e1", 10) == b""
    assert sleeping.container_info("c1").exec_ids == ("e1",)
    assert sleeping.read_stderr("c1", "e1", 10) == b""
    assert sleeping.container_info("c1").exec_ids == ()
    with pytest.raises(ProcessNotFoundError):
        sleeping.wait_process("c1", "e1")
    run_exec(sleeping, "c1", "e1", exec_process("true"))  # the id is free again


def test_exec_stdin_and_signal(sleeping: ContainerRuntime) -> None:
    pid = sleeping.exec_process("c1", "cat", exec_process("cat"))
    assert pid in sleeping.pids("c1")
    sleeping.write_stdin("c1", "cat", b"ping\n")
    assert sleeping.read_stdout("c1", "cat", 100) == b"ping\n"
    sleeping.signal_process("c1", "cat", signal.SIGKILL)
    assert sleeping.wait_process("c1", "cat", timeout=10) == 137
    sleeping.signal_process("c1", "cat", signal.SIGKILL)  # exited: a no-op


def test_exec_of_a_missing_binary_is_127(sleeping: ContainerRuntime) -> None:
    with pytest.raises(ExecError, match="exec: /bin/nosuch: No such file or directory") as caught:
        sleeping.exec_process("c1", "e1", exec_process("/bin/nosuch"))
    assert caught.value.exit_code == 127
    assert sleeping.wait_process("c1", "e1", timeout=10) == 127


def test_exec_ids_are_unique(sleeping: ContainerRuntime) -> None:
    sleeping.exec_process("c1", "e1", exec_process("sleep", "60"))
    with pytest.raises(ProcessExistsError, match="process 'e1': already exists"):
        sleeping.exec_process("c1", "e1", exec_process("true"))
    with pytest.raises(ProcessExistsError):
        sleeping.exec_process("c1", "", exec_process("true"))


def test_signal_all_kills_exec_processes_too(sleeping: ContainerRuntime) -> None:
    sleeping.exec_process("c1", "e1", exec_process("sleep", "60"))
    sleeping.signal_process("c1", "", signal.SIGKILL)
    assert sleeping.wait_process("c1", "", timeout=10) == 137
    assert sleeping.wait_process("c1", "e1", timeout=10) == 137


def test_exec_into_a_created_container_works_and_a_stopped_one_fails(
    runtime: ContainerRuntime, rootfs: Path
) -> None:
    runtime.create_container("c1", make_spec(rootfs, "true"))
    assert run_exec(runtime, "c1", "e1", exec_process("echo", "early")).stdout == "early\n"
    runtime.start_container("c1")
    runtime.wait_process("c1", "", timeout=10)
    with pytest.raises(StateError, match="exec in container c1: state is stopped, requires created or run"):
        runtime.exec_process("c1", "e2", exec_process("true"))


def test_exec_with_a_terminal(sleeping: ContainerRuntime) -> None:
    script = "test -t 0 && test -t 1 && echo tty"
    sleeping.exec_process("c1", "t", exec_process("sh", "-c", script, terminal=True))
    output = b""
    while chunk := sleeping.read_stdout("c1", "t", 100):
        output += chunk
    assert output == b"tty\r\n"
    assert sleeping.read_stderr("c1", "t", 100) == b""
    assert sleeping.wait_process("c1", "t", timeout=10) == 0
