"""Model <-> Kata's protobuf ``grpc.Spec``: the only module of kata.oci that imports protobuf."""

from __future__ import annotations

from collections.abc import Iterable

from kata.errors import OciError
from kata.oci.linux import (
    Device,
    IDMapping,
    IntelRdt,
    Linux,
    Namespace,
    Seccomp,
    SeccompArg,
    Syscall,
)
from kata.oci.model import Box, Capabilities, Hook, Hooks, Mount, Process, Rlimit, Root, Spec, User
from kata.oci.resources import (
    CPU,
    BlockIO,
    DeviceCgroup,
    HugepageLimit,
    InterfacePriority,
    Memory,
    Network,
    Pids,
    Resources,
    ThrottleDevice,
    WeightDevice,
)
from kata.protocols.pb import oci_pb2 as pb

# Wire conventions are those of Kata's runtime (Go OCItoGRPC: an unset pointer goes out as 0) and agent
# (trans.rs: 0 and "" read back as unset), so either side can talk to ours:
# - an optional number that is None is sent as 0, and 0 reads back as None (the wire cannot tell them
#   apart); an optional boolean reads back True or None;
# - an optional message (process, root, hooks, linux, resources, capabilities, console size, ...) is on
#   the wire exactly when it is set in the model;
# - a syscall's errno_ret uses the oneof, so errno 0 and "not set" stay apart;
# - fields grpc.Spec lacks are dropped on the way out and default on the way in: domainname,
#   process.command_line, user.umask, mount id mappings, linux.personality, resources.rdma/unified,
#   cpu.burst/idle, memory.use_hierarchy/check_before_update, seccomp.default_errno_ret/listener_*,
#   intel_rdt fields other than l3_cache_schema.

__all__ = [
    "process_from_pb",
    "process_to_pb",
    "resources_from_pb",
    "resources_to_pb",
    "spec_from_pb",
    "spec_to_pb",
]


def _zero(value: int | None) -> int:
    return 0 if value is None else value


def _unset(value: int) -> int | None:
    return value if value != 0 else None


def _flag(value: bool) -> bool | None:
    return True if value else None


def _wire(what: str, exc: Exception) -> OciError:
    return OciError(f"{what} to protobuf: {exc}")


# --- model -> protobuf --------------------------------------------------------------------------


def spec_to_pb(spec: Spec) -> pb.Spec:
    """The grpc.Spec Kata's agent receives in CreateContainerRequest.

    Raises:
        OciError: a number does not fit its protobuf field (a Spec not checked by spec_from_json).
    """
    try:
        return pb.Spec(
            Version=spec.oci_version,
            Process=None if spec.process is None else _process_to_pb(spec.process),
            Root=None if spec.root is None else pb.Root(Path=spec.root.path, Readonly=spec.root.readonly),
            Hostname=spec.hostname,
            Mounts=[_mount_to_pb(m) for m in spec.mounts],
            Hooks=None if spec.hooks is None else _hooks_to_pb(spec.hooks),
            Annotations=dict(spec.annotations),
            Linux=None if spec.linux is None else _linux_to_pb(spec.linux),
        )
    except (ValueError, TypeError) as exc:
        raise _wire("spec", exc) from exc


def process_to_pb(process: Process) -> pb.Process:
    """The grpc.Process of an exec (ExecProcessRequest).

    Raises:
        OciError: a number does not fit its protobuf field.
    """
    try:
        return _process_to_pb(process)
    except (ValueError, TypeError) as exc:
        raise _wire("process", exc) from exc


def resources_to_pb(resources: Resources) -> pb.LinuxResources:
    """The grpc.LinuxResources of UpdateContainerRequest.

    Raises:
        OciError: a number does not fit its protobuf field.
    """
    try:
        return _resources_to_pb(resources)
    except (ValueError, TypeError) as exc:
        raise _wire("resources", exc) from exc


def _process_to_pb(p: Process) -> pb.Process:
    caps = p.capabilities
    return pb.Process(
        Terminal=p.terminal,
        ConsoleSize=None if p.console_size is None else pb.Box(
            Height=p.console_size.height, Width=p.console_size.width),
        User=pb.User(UID=p.user.uid, GID=p.user.gid, AdditionalGids=p.user.additional_gids,
                     Username=p.user.username),
        Args=p.args,
        Env=p.env,
        Cwd=p.cwd,
        Capabilities=None if caps is None else pb.LinuxCapabilities(
            Bounding=caps.bounding, Effective=caps.effective, Inheritable=caps.inheritable,
            Permitted=caps.permitted, Ambient=caps.ambient),
        Rlimits=[pb.POSIXRlimit(Type=r.type, Hard=r.hard, Soft=r.soft) for r in p.rlimits],
        NoNewPrivileges=p.no_new_privileges,
        ApparmorProfile=p.apparmor_profile,
        OOMScoreAdj=_zero(p.oom_score_adj),
        SelinuxLabel=p.selinux_label,
    )


def _mount_to_pb(m: Mount) -> pb.Mount:
    return pb.Mount(destination=m.destination, source=m.source, type=m.type, options=m.options)


def _hook_list_to_pb(hooks: Iterable[Hook]) -> list[pb.Hook]:
    return [pb.Hook(Path=h.path, Args=h.args, Env=h.env, Timeout=_zero(h.timeout)) for h in hooks]


def _hooks_to_pb(h: Hooks) -> pb.Hooks:
    return pb.Hooks(
        Prestart=_hook_list_to_pb(h.prestart),
        CreateRuntime=_hook_list_to_pb(h.create_runtime),
        CreateContainer=_hook_list_to_pb(h.create_container),
        StartContainer=_hook_list_to_pb(h.start_container),
        Poststart=_hook_list_to_pb(h.poststart),
        Poststop=_hook_list_to_pb(h.poststop),
    )


def _id_mappings_to_pb(mappings: Iterable[IDMapping]) -> list[pb.LinuxIDMapping]:
    return [pb.LinuxIDMapping(HostID=m.host_id, ContainerID=m.container_id, Size=m.size) for m in mappings]


def _device_to_pb(d: Device) -> pb.LinuxDevice:
    return pb.LinuxDevice(Path=d.path, Type=d.type, Major=d.major, Minor=d.minor,
                          FileMode=_zero(d.file_mode), UID=_zero(d.uid), GID=_zero(d.gid))


def _syscall_to_pb(s: Syscall) -> pb.LinuxSyscall:
    message = pb.LinuxSyscall(
        Names=s.names,
        Action=s.action,
        Args=[pb.LinuxSeccompArg(Index=a.index, Value=a.value, ValueTwo=a.value_two, Op=a.op)
              for a in s.args],
    )
    if s.errno_ret is not None:
        message.errnoret = s.errno_ret
    return message


def _seccomp_to_pb(s: Seccomp) -> pb.LinuxSeccomp:
    return pb.LinuxSeccomp(DefaultAction=s.default_action, Architectures=s.architectures, Flags=s.flags,
                           Syscalls=[_syscall_to_pb(call) for call in s.syscalls])


def _linux_to_pb(x: Linux) -> pb.Linux:
    return pb.Linux(
        UIDMappings=_id_mappings_to_pb(x.uid_mappings),
        GIDMappings=_id_mappings_to_pb(x.gid_mappings),
        Sysctl=dict(x.sysctl),
        Resources=None if x.resources is None else _resources_to_pb(x.resources),
        CgroupsPath=x.cgroups_path,
        Namespaces=[pb.LinuxNamespace(Type=ns.type, Path=ns.path) for ns in x.namespaces],
        Devices=[_device_to_pb(d) for d in x.devices],
        Seccomp=None if x.seccomp is None else _seccomp_to_pb(x.seccomp),
        RootfsPropagation=x.rootfs_propagation,
        MaskedPaths=x.masked_paths,
        ReadonlyPaths=x.readonly_paths,
        MountLabel=x.mount_label,
        IntelRdt=None if x.intel_rdt is None else pb.LinuxIntelRdt(L3CacheSchema=x.intel_rdt.l3_cache_schema),
    )


def _memory_to_pb(m: Memory) -> pb.LinuxMemory:
    return pb.LinuxMemory(
        Limit=_zero(m.limit), Reservation=_zero(m.reservation), Swap=_zero(m.swap), Kernel=_zero(m.kernel),
        KernelTCP=_zero(m.kernel_tcp), Swappiness=_zero(m.swappiness),
        DisableOOMKiller=bool(m.disable_oom_killer),
    )


def _cpu_to_pb(c: CPU) -> pb.LinuxCPU:
    return pb.LinuxCPU(
        Shares=_zero(c.shares), Quota=_zero(c.quota), Period=_zero(c.period),
        RealtimeRuntime=_zero(c.realtime_runtime), RealtimePeriod=_zero(c.realtime_period),
        Cpus=c.cpus, Mems=c.mems,
    )


def _throttle_to_pb(devices: Iterable[ThrottleDevice]) -> list[pb.LinuxThrottleDevice]:
    return [pb.LinuxThrottleDevice(Major=d.major, Minor=d.minor, Rate=d.rate) for d in devices]


def _block_io_to_pb(b: BlockIO) -> pb.LinuxBlockIO:
    return pb.LinuxBlockIO(
        Weight=_zero(b.weight),
        LeafWeight=_zero(b.leaf_weight),
        WeightDevice=[
            pb.LinuxWeightDevice(Major=d.major, Minor=d.minor, Weight=_zero(d.weight),
                                 LeafWeight=_zero(d.leaf_weight))
            for d in b.weight_device
        ],
        ThrottleReadBpsDevice=_throttle_to_pb(b.throttle_read_bps_device),
        ThrottleWriteBpsDevice=_throttle_to_pb(b.throttle_write_bps_device),
        ThrottleReadIOPSDevice=_throttle_to_pb(b.throttle_read_iops_device),
        ThrottleWriteIOPSDevice=_throttle_to_pb(b.throttle_write_iops_device),
    )


def _resources_to_pb(r: Resources) -> pb.LinuxResources:
    return pb.LinuxResources(
        Devices=[
            pb.LinuxDeviceCgroup(Allow=d.allow, Type=d.type, Major=_zero(d.major), Minor=_zero(d.minor),
                                 Access=d.access)
            for d in r.devices
        ],
        Memory=None if r.memory is None else _memory_to_pb(r.memory),
        CPU=None if r.cpu is None else _cpu_to_pb(r.cpu),
        Pids=None if r.pids is None else pb.LinuxPids(Limit=r.pids.limit),
        BlockIO=None if r.block_io is None else _block_io_to_pb(r.block_io),
        HugepageLimits=[pb.LinuxHugepageLimit(Pagesize=h.page_size, Limit=h.limit)
                        for h in r.hugepage_limits],
        Network=None if r.network is None else pb.LinuxNetwork(
            ClassID=_zero(r.network.class_id),
            Priorities=[pb.LinuxInterfacePriority(Name=p.name, Priority=p.priority)
                        for p in r.network.priorities]),
    )


# --- protobuf -> model --------------------------------------------------------------------------


def spec_from_pb(message: pb.Spec) -> Spec:
    """The Spec of a grpc.Spec (as Kata's runtime fills it). Does not check runc's rules: see validate()."""
    return Spec(
        oci_version=message.Version,
        process=process_from_pb(message.Process) if message.HasField("Process") else None,
        root=(Root(path=message.Root.Path, readonly=message.Root.Readonly)
              if message.HasField("Root") else None),
        hostname=message.Hostname,
        mounts=tuple(
            Mount(destination=m.destination, type=m.type, source=m.source, options=tuple(m.options))
            for m in message.Mounts
        ),
        hooks=_hooks_from_pb(message.Hooks) if message.HasField("Hooks") else None,
        annotations=dict(message.Annotations),
        linux=_linux_from_pb(message.Linux) if message.HasField("Linux") else None,
    )


def process_from_pb(message: pb.Process) -> Process:
    """The Process of a grpc.Process (CreateContainer's spec or ExecProcessRequest)."""
    user = message.User
    caps = message.Capabilities
    size = message.ConsoleSize
    return Process(
        terminal=message.Terminal,
        console_size=Box(height=size.Height, width=size.Width) if message.HasField("ConsoleSize") else None,
        user=User(uid=user.UID, gid=user.GID, additional_gids=tuple(user.AdditionalGids),
                  username=user.Username),
        args=tuple(message.Args),
        env=tuple(message.Env),
        cwd=message.Cwd,
        capabilities=Capabilities(
            bounding=tuple(caps.Bounding), effective=tuple(caps.Effective),
            inheritable=tuple(caps.Inheritable), permitted=tuple(caps.Permitted), ambient=tuple(caps.Ambient),
        ) if message.HasField("Capabilities") else None,
        rlimits=tuple(Rlimit(type=r.Type, hard=r.Hard, soft=r.Soft) for r in message.Rlimits),
        no_new_privileges=message.NoNewPrivileges,
        apparmor_profile=message.ApparmorProfile,
        oom_score_adj=_unset(message.OOMScoreAdj),
        selinux_label=message.SelinuxLabel,
    )


def _hook_list_from_pb(hooks: Iterable[pb.Hook]) -> tuple[Hook, ...]:
    return tuple(Hook(path=h.Path, args=tuple(h.Args), env=tuple(h.Env), timeout=_unset(h.Timeout))
                 for h in hooks)


def _hooks_from_pb(h: pb.Hooks) -> Hooks:
    return Hooks(
        prestart=_hook_list_from_pb(h.Prestart),
        create_runtime=_hook_list_from_pb(h.CreateRuntime),
        create_container=_hook_list_from_pb(h.CreateContainer),
        start_container=_hook_list_from_pb(h.StartContainer),
        poststart=_hook_list_from_pb(h.Poststart),
        poststop=_hook_list_from_pb(h.Poststop),
    )


def _id_mappings_from_pb(mappings: Iterable[pb.LinuxIDMapping]) -> tuple[IDMapping, ...]:
    return tuple(IDMapping(container_id=m.ContainerID, host_id=m.HostID, size=m.Size) for m in mappings)


def _device_from_pb(d: pb.LinuxDevice) -> Device:
    return Device(path=d.Path, type=d.Type, major=d.Major, minor=d.Minor, file_mode=_unset(d.FileMode),
                  uid=_unset(d.UID), gid=_unset(d.GID))


def _syscall_from_pb(s: pb.LinuxSyscall) -> Syscall:
    return Syscall(
        names=tuple(s.Names),
        action=s.Action,
        errno_ret=s.errnoret if s.WhichOneof("ErrnoRet") == "errnoret" else None,
        args=tuple(SeccompArg(index=a.Index, value=a.Value, value_two=a.ValueTwo, op=a.Op) for a in s.Args),
    )


def _seccomp_from_pb(s: pb.LinuxSeccomp) -> Seccomp:
    return Seccomp(default_action=s.DefaultAction, architectures=tuple(s.Architectures), flags=tuple(s.Flags),
                   syscalls=tuple(_syscall_from_pb(call) for call in s.Syscalls))


def _linux_from_pb(x: pb.Linux) -> Linux:
    return Linux(
        uid_mappings=_id_mappings_from_pb(x.UIDMappings),
        gid_mappings=_id_mappings_from_pb(x.GIDMappings),
        sysctl=dict(x.Sysctl),
        resources=resources_from_pb(x.Resources) if x.HasField("Resources") else None,
        cgroups_path=x.CgroupsPath,
        namespaces=tuple(Namespace(type=ns.Type, path=ns.Path) for ns in x.Namespaces),
        devices=tuple(_device_from_pb(d) for d in x.Devices),
        seccomp=_seccomp_from_pb(x.Seccomp) if x.HasField("Seccomp") else None,
        rootfs_propagation=x.RootfsPropagation,
        masked_paths=tuple(x.MaskedPaths),
        readonly_paths=tuple(x.ReadonlyPaths),
        mount_label=x.MountLabel,
        intel_rdt=IntelRdt(l3_cache_schema=x.IntelRdt.L3CacheSchema) if x.HasField("IntelRdt") else None,
    )


def _memory_from_pb(m: pb.LinuxMemory) -> Memory:
    return Memory(
        limit=_unset(m.Limit), reservation=_unset(m.Reservation), swap=_unset(m.Swap),
        kernel=_unset(m.Kernel), kernel_tcp=_unset(m.KernelTCP), swappiness=_unset(m.Swappiness),
        disable_oom_killer=_flag(m.DisableOOMKiller),
    )


def _cpu_from_pb(c: pb.LinuxCPU) -> CPU:
    return CPU(
        shares=_unset(c.Shares), quota=_unset(c.Quota), period=_unset(c.Period),
        realtime_runtime=_unset(c.RealtimeRuntime), realtime_period=_unset(c.RealtimePeriod),
        cpus=c.Cpus, mems=c.Mems,
    )


def _throttle_from_pb(devices: Iterable[pb.LinuxThrottleDevice]) -> tuple[ThrottleDevice, ...]:
    return tuple(ThrottleDevice(major=d.Major, minor=d.Minor, rate=d.Rate) for d in devices)


def _block_io_from_pb(b: pb.LinuxBlockIO) -> BlockIO:
    return BlockIO(
        weight=_unset(b.Weight),
        leaf_weight=_unset(b.LeafWeight),
        weight_device=tuple(
            WeightDevice(major=d.Major, minor=d.Minor, weight=_unset(d.Weight),
                         leaf_weight=_unset(d.LeafWeight))
            for d in b.WeightDevice
        ),
        throttle_read_bps_device=_throttle_from_pb(b.ThrottleReadBpsDevice),
        throttle_write_bps_device=_throttle_from_pb(b.ThrottleWriteBpsDevice),
        throttle_read_iops_device=_throttle_from_pb(b.ThrottleReadIOPSDevice),
        throttle_write_iops_device=_throttle_from_pb(b.ThrottleWriteIOPSDevice),
    )


def resources_from_pb(message: pb.LinuxResources) -> Resources:
    """The Resources of a grpc.LinuxResources (in a spec or an UpdateContainerRequest)."""
    r = message
    return Resources(
        devices=tuple(
            DeviceCgroup(allow=d.Allow, type=d.Type, major=_unset(d.Major), minor=_unset(d.Minor),
                         access=d.Access)
            for d in r.Devices
        ),
        memory=_memory_from_pb(r.Memory) if r.HasField("Memory") else None,
        cpu=_cpu_from_pb(r.CPU) if r.HasField("CPU") else None,
        pids=Pids(limit=r.Pids.Limit) if r.HasField("Pids") else None,
        block_io=_block_io_from_pb(r.BlockIO) if r.HasField("BlockIO") else None,
        hugepage_limits=tuple(HugepageLimit(page_size=h.Pagesize, limit=h.Limit) for h in r.HugepageLimits),
        network=Network(
            class_id=_unset(r.Network.ClassID),
            priorities=tuple(InterfacePriority(name=p.Name, priority=p.Priority)
                             for p in r.Network.Priorities),
        ) if r.HasField("Network") else None,
    )
