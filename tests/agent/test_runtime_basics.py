"""Container lifecycle on the host: namespaces, identity, exit codes, stdio and the state guards."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kata.errors import OciError, StateError
from kata.guest.runtime import (
    ContainerExistsError,
    ContainerNotFoundError,
    ContainerRuntime,
    ContainerState,
    ExecError,
    ProcessNotFoundError,
    ProcessState,
    SetupError,
    UnsupportedError,
)
from kata.oci import Mount, Namespace, Rlimit, User
from tests.agent.support import drain, make_spec, run, with_linux, with_process


def test_init_is_pid_1_of_its_own_pid_namespace(runtime: ContainerRuntime, rootfs: Path) -> None:
    result = run(runtime, make_spec(rootfs, "sh", "-c", "echo $$"))
    assert (result.status, result.stdout) == (0, "1\n")


def test_hostname_and_domainname_come_from_the_spec(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "sh", "-c", "hostname; cat /proc/sys/kernel/domainname")
    spec = replace(spec, hostname="box", domainname="example")
    assert run(runtime, spec).stdout == "box\nexample\n"
    assert os.uname().nodename != "box"


def test_user_and_groups_come_from_the_spec(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "id", user=User(uid=1000, gid=1001, additional_gids=(5, 20)))
    assert run(runtime, spec).stdout == "uid=1000 gid=1001 groups=5,20\n"


def test_env_is_exactly_the_spec_env(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = with_process(make_spec(rootfs, "env"), env=("PATH=/bin", "A=b c", "EMPTY="))
    assert sorted(run(runtime, spec).stdout.splitlines()) == ["A=b c", "EMPTY=", "PATH=/bin"]


def test_cwd_is_created_when_missing(runtime: ContainerRuntime, rootfs: Path) -> None:
    result = run(runtime, make_spec(rootfs, "pwd", cwd="/work/dir"))
    assert result.stdout == "/work/dir\n"
    assert (rootfs / "work" / "dir").is_dir()


def test_exit_code_is_reported(runtime: ContainerRuntime, rootfs: Path) -> None:
    assert run(runtime, make_spec(rootfs, "sh", "-c", "exit 7")).status == 7


def test_stdout_and_stderr_are_separate_and_end_at_eof(runtime: ContainerRuntime, rootfs: Path) -> None:
    result = run(runtime, make_spec(rootfs, "sh", "-c", "echo out; echo err >&2; echo more"))
    assert (result.stdout, result.stderr) == ("out\nmore\n", "err\n")


def test_sigkill_gives_137_and_stopped_state(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    runtime.start_container("c1")
    assert runtime.container_info("c1").state is ContainerState.RUNNING
    runtime.signal_process("c1", "", signal.SIGKILL)
    assert runtime.wait_process("c1", "", timeout=10) == 137
    info = runtime.container_info("c1")
    assert (info.state, info.exit_status) == (ContainerState.STOPPED, 137)
    assert runtime.process_info("c1", "").state is ProcessState.EXITED
    runtime.remove_container("c1")


def test_sigterm_to_an_init_without_handler_kills_it(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    runtime.start_container("c1")
    runtime.signal_process("c1", "", signal.SIGTERM)
    assert runtime.wait_process("c1", "", timeout=10) == 137


def test_signal_reaches_a_handler_of_init(runtime: ContainerRuntime, rootfs: Path) -> None:
    script = "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done"
    runtime.create_container("c1", make_spec(rootfs, "sh", "-c", script))
    runtime.start_container("c1")
    assert runtime.read_stdout("c1", "", 100) == b"ready\n"
    runtime.signal_process("c1", "c1", signal.SIGTERM)  # the container id addresses init too
    assert runtime.wait_process("c1", "", timeout=10) == 3
    assert drain(runtime.read_stdout, "c1", "") == b"got-term\n"


def test_stdin_is_echoed_and_closing_it_ends_cat(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "cat"))
    runtime.start_container("c1")
    assert runtime.write_stdin("c1", "", b"hello\n") == 6
    assert runtime.read_stdout("c1", "", 100) == b"hello\n"
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(drain(runtime.read_stdout, "c1", "")))
    reader.start()  # more than two pipes hold: read while writing, as the shim does
    runtime.write_stdin("c1", "", b"x" * 200_000)
    runtime.close_stdin("c1", "")
    reader.join(10)
    assert received == [b"x" * 200_000]
    assert runtime.wait_process("c1", "", timeout=10) == 0
    with pytest.raises(StateError, match="stdin is closed"):
        runtime.write_stdin("c1", "", b"late")


def test_missing_binary_is_a_clear_error_and_127(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "/bin/nosuch"))
    with pytest.raises(ExecError, match=r"^exec: /bin/nosuch: No such file or directory$") as caught:
        runtime.start_container("c1")
    assert caught.value.exit_code == 127
    assert runtime.wait_process("c1", "", timeout=10) == 127
    assert runtime.container_info("c1").state is ContainerState.STOPPED


def test_binary_not_on_path_is_127(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "nosuch"))
    with pytest.raises(ExecError, match=r"nosuch: executable file not found in \$PATH"):
        runtime.start_container("c1")
    assert runtime.wait_process("c1", "", timeout=10) == 127


def test_file_that_is_not_executable_is_126(runtime: ContainerRuntime, rootfs: Path) -> None:
    (rootfs / "data").write_text("not a program")
    runtime.create_container("c1", make_spec(rootfs, "/data"))
    with pytest.raises(ExecError, match="exec: /data: Permission denied") as caught:
        runtime.start_container("c1")
    assert caught.value.exit_code == 126


def test_state_guards_and_unknown_ids(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "true"))
    assert runtime.container_info("c1").state is ContainerState.CREATED
    with pytest.raises(ContainerExistsError, match="container c1: already exists"):
        runtime.create_container("c1", make_spec(rootfs, "true"))
    with pytest.raises(StateError, match="resume container c1: state is created, requires paused"):
        runtime.resume_container("c1")
    runtime.start_container("c1")
    assert runtime.wait_process("c1", "", timeout=10) == 0
    with pytest.raises(StateError, match="start container c1: state is stopped, requires created") as caught:
        runtime.start_container("c1")
    assert (caught.value.state, caught.value.required) == ("stopped", ("created",))
    with pytest.raises(ContainerNotFoundError, match="container nope: not found"):
        runtime.start_container("nope")
    with pytest.raises(ProcessNotFoundError, match="process 'nope': not found"):
        runtime.wait_process("c1", "nope")
    assert runtime.container_ids() == ("c1",)


def test_remove_before_start_kills_the_waiting_init(runtime: ContainerRuntime, rootfs: Path) -> None:
    info = runtime.create_container("c1", make_spec(rootfs, "true"))
    runtime.remove_container("c1", timeout=10)
    assert not Path(f"/proc/{info.pid}").exists()
    assert runtime.container_ids() == ()


def test_remove_kills_a_running_container(runtime: ContainerRuntime, rootfs: Path) -> None:
    info = runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    runtime.start_container("c1")
    started = time.monotonic()
    runtime.remove_container("c1", timeout=10)
    assert time.monotonic() - started < 5
    assert not Path(f"/proc/{info.pid}").exists()
    with pytest.raises(ContainerNotFoundError):
        runtime.container_info("c1")


def test_malformed_specs_name_the_field(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "true")
    with pytest.raises(OciError, match=r"^process.args: must not be empty$"):
        runtime.create_container("c1", with_process(spec, args=()))
    with pytest.raises(OciError, match=r"process.rlimits\[0\].type: unknown rlimit 'RLIMIT_NOPE'"):
        nope = Rlimit(type="RLIMIT_NOPE", soft=1, hard=1)
        runtime.create_container("c1", with_process(spec, rlimits=(nope,)))
    with pytest.raises(UnsupportedError, match="user namespaces are not supported"):
        runtime.create_container("c1", with_linux(spec, namespaces=(Namespace(type="user"),
                                                                    Namespace(type="mount"))))
    with pytest.raises(OciError, match="container id 'a/b'"):
        runtime.create_container("a/b", spec)
    with pytest.raises(OciError, match=r"container id '\.\.'"):
        runtime.create_container("..", spec)
    assert runtime.container_ids() == ()


def test_failed_setup_names_the_step_and_leaves_nothing(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "true")
    spec = replace(spec, mounts=(*spec.mounts, Mount(destination="/data", type="bind", source="/nonexistent",
                                                     options=("rbind",))))
    with pytest.raises(SetupError, match="rootfs: /nonexistent: No such file or directory"):
        runtime.create_container("c1", spec)
    assert runtime.container_ids() == ()
