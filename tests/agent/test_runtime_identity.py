"""Privileges of the container's process: capabilities, no_new_privs, rlimits, umask, oom score, seccomp."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata.errors import OciError
from kata.guest.runtime import ContainerRuntime, ExecError, UnsupportedError
from kata.guest.runtime.caps import CAPABILITIES
from kata.oci import Capabilities, Rlimit, Seccomp, SeccompArg, Spec, Syscall, User
from tests.agent.support import make_spec, run, with_linux

STATUS_FIELDS = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t") for line in text.splitlines())


def mask(*names: str) -> str:
    return f"{sum(1 << CAPABILITIES[name] for name in names):016x}"


def test_default_capabilities_and_no_new_privs(runtime: ContainerRuntime, rootfs: Path) -> None:
    fields = status_fields(run(runtime, make_spec(rootfs, "sh", "-c", STATUS_FIELDS)).stdout)
    default = mask("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert fields == {"CapInh": "0" * 16, "CapPrm": default, "CapEff": default, "CapBnd": default,
                      "CapAmb": "0" * 16, "NoNewPrivs": "1"}


def test_capabilities_of_a_non_root_user_with_ambient(runtime: ContainerRuntime, rootfs: Path) -> None:
    caps = ("CAP_NET_RAW", "CAP_CHOWN")
    capabilities = Capabilities(bounding=caps, effective=caps, permitted=caps, inheritable=caps,
                                ambient=("CAP_NET_RAW",))
    spec = make_spec(rootfs, "sh", "-c", STATUS_FIELDS, user=User(uid=1000, gid=1000),
                     no_new_privileges=False, capabilities=capabilities)
    fields = status_fields(run(runtime, spec).stdout)
    assert (fields["CapBnd"], fields["CapInh"]) == (mask(*caps), mask(*caps))
    # After execve a non-root process keeps only its ambient capabilities.
    assert (fields["CapEff"], fields["CapPrm"], fields["CapAmb"]) == (mask("CAP_NET_RAW"),) * 3
    assert fields["NoNewPrivs"] == "0"


def test_unknown_capability_names_the_field(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "true", capabilities=Capabilities(bounding=("CAP_NOPE",)))
    with pytest.raises(OciError, match=r"process.capabilities.bounding: unknown capability 'CAP_NOPE'"):
        runtime.create_container("c1", spec)


def test_rlimits_umask_and_oom_score_adj(runtime: ContainerRuntime, rootfs: Path) -> None:
    rlimits = (Rlimit(type="RLIMIT_NOFILE", soft=256, hard=512), Rlimit(type="RLIMIT_CORE", soft=0, hard=0))
    script = "ulimit -n; ulimit -Hn; ulimit -c; umask; cat /proc/self/oom_score_adj"
    spec = make_spec(rootfs, "sh", "-c", script, rlimits=rlimits, oom_score_adj=500,
                     user=User(uid=0, gid=0, umask=0o027))
    assert run(runtime, spec).stdout.split() == ["256", "512", "0", "0027", "500"]


def seccomp_spec(rootfs: Path, script: str, *syscalls: Syscall, default: str = "SCMP_ACT_ALLOW") -> Spec:
    spec = make_spec(rootfs, "sh", "-c", script)
    return with_linux(spec, seccomp=Seccomp(default_action=default, architectures=("SCMP_ARCH_X86_64",),
                                            syscalls=syscalls))


def test_seccomp_errno_rule(runtime: ContainerRuntime, rootfs: Path) -> None:
    deny = Syscall(names=("mkdir", "mkdirat"), action="SCMP_ACT_ERRNO", errno_ret=13)
    result = run(runtime, seccomp_spec(rootfs, "mkdir /tmp/d || echo denied; touch /tmp/f && echo ok", deny))
    assert result.stdout == "denied\nok\n"
    assert "Permission denied" in result.stderr


def test_seccomp_argument_comparison(runtime: ContainerRuntime, rootfs: Path) -> None:
    # kill(pid, SIGUSR1) is refused, kill(pid, 0) still allowed.
    deny = Syscall(names=("kill",), action="SCMP_ACT_ERRNO",
                   args=(SeccompArg(index=1, value=10, op="SCMP_CMP_EQ"),))
    script = "kill -0 $$ && echo zero-ok; kill -USR1 $$ || echo usr1-denied"
    result = run(runtime, seccomp_spec(rootfs, script, deny))
    assert result.stdout == "zero-ok\nusr1-denied\n"


def test_seccomp_kill_action(runtime: ContainerRuntime, rootfs: Path) -> None:
    kill = Syscall(names=("getppid",), action="SCMP_ACT_KILL_PROCESS")
    assert run(runtime, seccomp_spec(rootfs, "echo $PPID", kill)).status == 128 + 31  # SIGSYS


def test_seccomp_is_loaded_last_so_a_denied_execve_is_reported(
    runtime: ContainerRuntime, rootfs: Path
) -> None:
    spec = make_spec(rootfs, "true")
    allowed = Syscall(names=("read", "write", "close", "exit_group"), action="SCMP_ACT_ALLOW")
    spec = with_linux(spec, seccomp=Seccomp(default_action="SCMP_ACT_ERRNO", syscalls=(allowed,)))
    runtime.create_container("c1", spec)
    with pytest.raises(ExecError, match="exec: /bin/true: Operation not permitted") as caught:
        runtime.start_container("c1")
    assert caught.value.exit_code == 126


def test_seccomp_notify_is_unsupported(runtime: ContainerRuntime, rootfs: Path) -> None:
    notify = Syscall(names=("mkdir",), action="SCMP_ACT_NOTIFY")
    with pytest.raises(UnsupportedError, match=r"syscalls\[0\].action: SCMP_ACT_NOTIFY is not supported"):
        runtime.create_container("c1", seccomp_spec(rootfs, "true", notify))
