"""Model <-> Kata's grpc.Spec protobuf: exact round trips and the wire conventions of Kata's runtime/agent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kata.errors import OciError
from kata.oci import (
    CPU,
    IntelRdt,
    Memory,
    Process,
    Resources,
    Seccomp,
    Spec,
    Syscall,
    User,
    default_spec,
)
from kata.oci.translate import (
    process_from_pb,
    process_to_pb,
    resources_from_pb,
    resources_to_pb,
    spec_from_pb,
    spec_to_pb,
)
from kata.protocols.pb import oci_pb2
from tests.unit.test_oci_json import rich_spec


def without_unwired(spec: Spec) -> Spec:
    """The spec less what grpc.Spec has no field for: what the agent sees of it."""
    assert spec.process and spec.linux and spec.linux.resources
    assert spec.linux.seccomp and spec.linux.intel_rdt
    process = replace(spec.process, command_line="", user=replace(spec.process.user, umask=None))
    resources = spec.linux.resources
    assert resources.cpu and resources.memory
    resources = replace(
        resources,
        cpu=replace(resources.cpu, burst=None, idle=None),
        memory=replace(resources.memory, use_hierarchy=None, check_before_update=None),
        rdma={},
        unified={},
    )
    linux = replace(
        spec.linux,
        resources=resources,
        seccomp=replace(spec.linux.seccomp, default_errno_ret=None, listener_path="", listener_metadata=""),
        intel_rdt=IntelRdt(l3_cache_schema=spec.linux.intel_rdt.l3_cache_schema),
        personality=None,
    )
    mounts = tuple(replace(m, uid_mappings=(), gid_mappings=()) for m in spec.mounts)
    return replace(spec, domainname="", process=process, mounts=mounts, linux=linux)


def wire_round_trip(spec: Spec) -> Spec:
    data = spec_to_pb(spec).SerializeToString()
    return spec_from_pb(oci_pb2.Spec.FromString(data))


def test_default_spec_round_trips_exactly() -> None:
    assert wire_round_trip(default_spec()) == default_spec()
    assert wire_round_trip(default_spec(rootless=True)) == default_spec(rootless=True)


def test_rich_spec_round_trips_every_wired_field() -> None:
    spec = rich_spec()
    assert wire_round_trip(spec) == without_unwired(spec)
    assert wire_round_trip(without_unwired(spec)) == without_unwired(spec)


def test_default_spec_on_the_wire() -> None:
    message = spec_to_pb(default_spec())
    assert message.Version == default_spec().oci_version
    assert message.Process.HasField("User") and message.Process.User.UID == 0
    assert list(message.Process.Args) == ["sh"]
    assert list(message.Process.Capabilities.Bounding) == ["CAP_AUDIT_WRITE", "CAP_KILL",
                                                           "CAP_NET_BIND_SERVICE"]
    assert not message.Process.HasField("ConsoleSize")
    assert [(r.Type, r.Hard, r.Soft) for r in message.Process.Rlimits] == [("RLIMIT_NOFILE", 1024, 1024)]
    assert message.Root.Path == "rootfs" and message.Root.Readonly
    proc = message.Mounts[0]
    assert (proc.destination, proc.type, proc.source, list(proc.options)) == ("/proc", "proc", "proc", [])
    assert not message.HasField("Hooks")
    device = message.Linux.Resources.Devices[0]
    assert (device.Allow, device.Type, device.Major, device.Minor, device.Access) == (False, "", 0, 0, "rwm")
    assert not message.Linux.Resources.HasField("Memory")
    assert [ns.Type for ns in message.Linux.Namespaces] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert not message.Linux.HasField("Seccomp")


def test_unset_numbers_go_as_zero_and_zero_reads_back_unset() -> None:
    resources = Resources(memory=Memory(limit=None, swap=-1, swappiness=0, disable_oom_killer=False),
                          cpu=CPU(quota=-1, shares=0))
    message = resources_to_pb(resources)
    assert (message.Memory.Limit, message.Memory.Swap, message.Memory.Swappiness) == (0, -1, 0)
    assert not message.Memory.DisableOOMKiller
    back = resources_from_pb(message)
    assert back.memory == Memory(swap=-1)
    assert back.cpu == CPU(quota=-1)


def test_errno_zero_and_unset_stay_apart() -> None:
    seccomp = Seccomp(default_action="SCMP_ACT_ALLOW", syscalls=(
        Syscall(names=("a",), action="SCMP_ACT_ERRNO", errno_ret=0),
        Syscall(names=("b",), action="SCMP_ACT_ERRNO"),
    ))
    spec = replace(default_spec(), linux=replace(default_spec().linux or pytest.fail(), seccomp=seccomp))
    message = spec_to_pb(spec)
    assert [s.WhichOneof("ErrnoRet") for s in message.Linux.Seccomp.Syscalls] == ["errnoret", None]
    assert wire_round_trip(spec) == spec


def test_empty_optional_messages_stay_present() -> None:
    process = Process(args=("true",), cwd="/")
    spec = Spec(oci_version="1.1.0", process=replace(process, capabilities=None),
                linux=replace(default_spec().linux or pytest.fail(), resources=Resources()))
    assert wire_round_trip(spec) == spec
    assert spec_to_pb(spec).Linux.HasField("Resources")


def test_spec_as_kata_runtime_sends_it() -> None:
    # Kata's Go runtime (OCItoGRPC) copies by field name and leaves unset pointers at zero.
    message = oci_pb2.Spec(
        Version="1.0.2-dev",
        Process=oci_pb2.Process(
            User=oci_pb2.User(UID=1000, GID=1000, AdditionalGids=[10]),
            Args=["sleep", "1"], Env=["PATH=/bin"], Cwd="/",
            Capabilities=oci_pb2.LinuxCapabilities(Bounding=["CAP_KILL"]),
            OOMScoreAdj=0,
        ),
        Root=oci_pb2.Root(Path="/run/kata-containers/shared/containers/abc/rootfs"),
        Hostname="pod",
        Mounts=[oci_pb2.Mount(destination="/dev/shm", source="/run/kata-containers/sandbox/shm",
                              type="bind", options=["rbind"])],
        Annotations={"io.kubernetes.cri.container-type": "container"},
        Linux=oci_pb2.Linux(
            Namespaces=[oci_pb2.LinuxNamespace(Type="mount"),
                        oci_pb2.LinuxNamespace(Type="ipc", Path="/proc/1/ns/ipc")],
            Resources=oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=1 << 28)),
            CgroupsPath="/kubepods/abc",
        ),
    )
    spec = spec_from_pb(message)
    assert spec.process is not None
    assert spec.process.user == User(uid=1000, gid=1000, additional_gids=(10,))
    assert spec.process.oom_score_adj is None and spec.process.console_size is None
    assert spec.mounts[0].source == "/run/kata-containers/sandbox/shm"
    assert spec.annotations == {"io.kubernetes.cri.container-type": "container"}
    assert spec.linux is not None and spec.linux.resources is not None
    assert spec.linux.resources.memory == Memory(limit=1 << 28)
    assert spec.linux.namespace("ipc") is not None and spec.linux.namespace("pid") is None
    assert spec_to_pb(spec) == message


def test_process_and_resources_round_trip() -> None:
    spec = without_unwired(rich_spec())
    assert spec.process and spec.linux and spec.linux.resources
    assert process_from_pb(process_to_pb(spec.process)) == spec.process
    assert resources_from_pb(resources_to_pb(spec.linux.resources)) == spec.linux.resources


def test_numbers_out_of_range_are_oci_errors() -> None:
    process = Process(args=("sh",), cwd="/", user=User(uid=-1, gid=0))
    with pytest.raises(OciError, match=r"^process to protobuf: "):
        process_to_pb(process)
    with pytest.raises(OciError, match=r"^spec to protobuf: "):
        spec_to_pb(Spec(oci_version="1.1.0", process=process))
    with pytest.raises(OciError, match=r"^resources to protobuf: "):
        resources_to_pb(Resources(memory=Memory(swappiness=-1)))
