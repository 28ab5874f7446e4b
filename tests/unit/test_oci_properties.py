"""Property tests: generated valid Specs survive JSON and protobuf round trips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata.oci import (
    CPU,
    BlockIO,
    Box,
    Capabilities,
    Device,
    DeviceCgroup,
    Hook,
    Hooks,
    HugepageLimit,
    IDMapping,
    IntelRdt,
    InterfacePriority,
    Linux,
    Memory,
    Mount,
    Namespace,
    Network,
    Personality,
    Pids,
    Process,
    Rdma,
    Resources,
    Rlimit,
    Root,
    Seccomp,
    SeccompArg,
    Spec,
    Syscall,
    ThrottleDevice,
    User,
    WeightDevice,
    spec_from_json,
    spec_to_json,
    validate,
)
from kata.oci.rules import (
    NAMESPACE_TYPES,
    RLIMIT_TYPES,
    ROOTFS_PROPAGATIONS,
    SECCOMP_ACTIONS,
    SECCOMP_ARCHITECTURES,
    SECCOMP_FLAGS,
    SECCOMP_OPERATORS,
)
from kata.oci.translate import spec_from_pb, spec_to_pb
from kata.protocols.pb import oci_pb2

T = TypeVar("T")
S = st.SearchStrategy

U16 = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)

WORD = st.text("abcxyz-_.019", min_size=1, max_size=6)
TEXT = st.text(max_size=6)
PATH = st.builds(lambda parts: "/" + "/".join(parts), st.lists(WORD, max_size=3))


def small(items: S[T], min_size: int = 0) -> S[tuple[T, ...]]:
    return st.lists(items, min_size=min_size, max_size=2).map(tuple)


def sampled(values: frozenset[str]) -> S[str]:
    return st.sampled_from(sorted(values))


class Strategies:
    """Valid model objects; with ``wire`` only what grpc.Spec carries exactly (no lossy zeros)."""

    def __init__(self, wire: bool) -> None:
        self.wire = wire

    def opt(self, values: S[Any]) -> S[Any]:
        """An optional number: on the wire 0 reads back as unset, so it is never drawn there."""
        return st.none() | (values.filter(bool) if self.wire else values)

    def flag(self) -> S[bool | None]:
        return st.sampled_from([None, True]) if self.wire else st.sampled_from([None, True, False])

    def unwired(self, values: S[T], default: T) -> S[T]:
        """A field grpc.Spec has no room for: left at its default on the wire."""
        return st.just(default) if self.wire else values

    def process(self) -> S[Process]:
        env = st.builds(lambda k, v: f"{k}={v}", WORD, TEXT)
        rlimits = st.lists(sampled(RLIMIT_TYPES), unique=True, max_size=3).flatmap(
            lambda types: st.tuples(*(st.builds(Rlimit, type=st.just(t), hard=U64, soft=U64) for t in types)))
        caps = small(st.sampled_from(["CAP_KILL", "CAP_CHOWN", "CAP_SYS_ADMIN"]))
        return st.builds(
            Process,
            terminal=st.booleans(),
            console_size=st.none() | st.builds(Box, height=U32, width=U32),
            user=st.builds(User, uid=U32, gid=U32, umask=self.unwired(st.none() | U32, None),
                           additional_gids=small(U32), username=TEXT),
            args=small(TEXT, min_size=1),
            command_line=self.unwired(TEXT, ""),
            env=small(env),
            cwd=PATH,
            capabilities=st.none() | st.builds(Capabilities, bounding=caps, effective=caps, inheritable=caps,
                                               permitted=caps, ambient=caps),
            rlimits=rlimits,
            no_new_privileges=st.booleans(),
            apparmor_profile=TEXT,
            oom_score_adj=self.opt(st.integers(-1000, 1000)),
            selinux_label=TEXT,
        )

    def id_mappings(self, min_size: int = 0) -> S[tuple[IDMapping, ...]]:
        return small(st.builds(IDMapping, container_id=U32, host_id=U32, size=U32), min_size)

    def mount(self) -> S[Mount]:
        source = TEXT.filter(lambda s: "\0" not in s)
        return st.builds(Mount, destination=PATH, type=WORD | st.just(""), source=source,
                         options=small(WORD), uid_mappings=self.unwired(self.id_mappings(), ()),
                         gid_mappings=self.unwired(self.id_mappings(), ()))

    def hooks(self) -> S[Hooks]:
        hooks = small(st.builds(Hook, path=PATH, args=small(TEXT), env=small(TEXT),
                                timeout=st.none() | st.integers(1, 2**40)))
        return st.builds(Hooks, prestart=hooks, create_runtime=hooks, create_container=hooks,
                         start_container=hooks, poststart=hooks, poststop=hooks)

    def resources(self) -> S[Resources]:
        i64, u64 = self.opt(I64), self.opt(U64)
        throttle = small(st.builds(ThrottleDevice, major=I64, minor=I64, rate=U64))
        return st.builds(
            Resources,
            devices=small(st.builds(DeviceCgroup, allow=st.booleans(),
                                    type=st.sampled_from(["", "a", "b", "c"]), major=self.opt(I64),
                                    minor=self.opt(I64), access=st.sampled_from(["r", "rw", "rwm", "m"]))),
            memory=st.none() | st.builds(
                Memory, limit=i64, reservation=i64, swap=i64, kernel=i64, kernel_tcp=i64, swappiness=u64,
                disable_oom_killer=self.flag(), use_hierarchy=self.unwired(st.none() | st.booleans(), None),
                check_before_update=self.unwired(st.none() | st.booleans(), None)),
            cpu=st.none() | st.builds(
                CPU, shares=u64, quota=i64, burst=self.unwired(st.none() | U64, None), period=u64,
                realtime_runtime=i64, realtime_period=u64, cpus=TEXT, mems=TEXT,
                idle=self.unwired(st.none() | I64, None)),
            pids=st.none() | st.builds(Pids, limit=I64),
            block_io=st.none() | st.builds(
                BlockIO, weight=self.opt(U16), leaf_weight=self.opt(U16),
                weight_device=small(st.builds(WeightDevice, major=I64, minor=I64, weight=self.opt(U16),
                                              leaf_weight=self.opt(U16))),
                throttle_read_bps_device=throttle, throttle_write_bps_device=throttle,
                throttle_read_iops_device=throttle, throttle_write_iops_device=throttle),
            hugepage_limits=small(st.builds(HugepageLimit, page_size=WORD, limit=U64)),
            network=st.none() | st.builds(Network, class_id=self.opt(U32), priorities=small(
                st.builds(InterfacePriority, name=WORD, priority=U32))),
            rdma=self.unwired(st.dictionaries(WORD, st.builds(Rdma, hca_handles=st.none() | U32,
                                                              hca_objects=st.none() | U32), max_size=2), {}),
            unified=self.unwired(st.dictionaries(WORD, TEXT, max_size=2), {}),
        )

    def seccomp(self) -> S[Seccomp]:
        op = sampled(SECCOMP_OPERATORS)
        args = small(st.builds(SeccompArg, index=U64, value=U64, value_two=U64, op=op))
        syscall = st.builds(Syscall, names=small(WORD, min_size=1), action=sampled(SECCOMP_ACTIONS),
                            errno_ret=st.none() | U32, args=args)
        return st.builds(
            Seccomp, default_action=sampled(SECCOMP_ACTIONS),
            default_errno_ret=self.unwired(st.none() | U32, None),
            architectures=small(sampled(SECCOMP_ARCHITECTURES)), flags=small(sampled(SECCOMP_FLAGS)),
            listener_path=self.unwired(TEXT, ""), listener_metadata=self.unwired(TEXT, ""),
            syscalls=small(syscall),
        )

    def intel_rdt(self) -> S[IntelRdt]:
        return st.builds(IntelRdt, clos_id=self.unwired(TEXT, ""), l3_cache_schema=TEXT,
                         mem_bw_schema=self.unwired(TEXT, ""), enable_cmt=self.unwired(st.booleans(), False),
                         enable_mbm=self.unwired(st.booleans(), False))

    @st.composite
    def linux(draw: Callable[[S[Any]], Any], self: Strategies) -> Linux:  # noqa: N805
        types = draw(st.lists(sampled(NAMESPACE_TYPES), unique=True))
        namespaces = tuple(Namespace(type=t, path=draw(st.just("") | PATH)) for t in types)
        user = next((ns for ns in namespaces if ns.type == "user"), None)
        has_mount = any(ns.type == "mount" for ns in namespaces)
        return Linux(
            # A user namespace to create needs mappings (this draws both, runc wants one of them).
            uid_mappings=draw(self.id_mappings(1)) if user else (),
            gid_mappings=draw(self.id_mappings(1)) if user else (),
            sysctl=draw(st.dictionaries(WORD, TEXT, max_size=2)),
            resources=draw(st.none() | self.resources()),
            cgroups_path=draw(TEXT),
            namespaces=namespaces,
            devices=draw(small(st.builds(Device, path=PATH, type=st.sampled_from(["c", "b", "u", "p"]),
                                         major=I64, minor=I64, file_mode=self.opt(U32), uid=self.opt(U32),
                                         gid=self.opt(U32)))),
            seccomp=draw(st.none() | self.seccomp()),
            rootfs_propagation=draw(st.sampled_from(["", *sorted(ROOTFS_PROPAGATIONS)])),
            masked_paths=draw(small(PATH)) if has_mount else (),
            readonly_paths=draw(small(PATH)) if has_mount else (),
            mount_label=draw(TEXT),
            intel_rdt=draw(st.none() | self.intel_rdt()),
            personality=draw(self.unwired(st.none() | st.builds(
                Personality, domain=st.sampled_from(["LINUX", "LINUX32"]), flags=small(WORD)), None)),
        )

    @st.composite
    def spec(draw: Callable[[S[Any]], Any], self: Strategies) -> Spec:  # noqa: N805
        linux = draw(st.none() | self.linux())
        has_uts = linux is not None and linux.namespace("uts") is not None
        names = WORD if has_uts else st.just("")  # runc needs a uts namespace to set them
        return Spec(
            oci_version=draw(st.sampled_from(["1.0.2", "1.1.0", "1.2.0"])),
            process=draw(st.none() | self.process()),
            root=draw(st.builds(Root, path=WORD, readonly=st.booleans())),
            hostname=draw(names),
            domainname=draw(self.unwired(names, "")),
            mounts=draw(small(self.mount())),
            hooks=draw(st.none() | self.hooks()),
            annotations=draw(st.dictionaries(TEXT, TEXT, max_size=3)),
            linux=linux,
        )


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(Strategies(wire=False).spec())
def test_json_round_trip_and_stable_protobuf_round_trip(spec: Spec) -> None:
    validate(spec)  # the strategy draws only valid specs
    assert spec_from_json(spec_to_json(spec)) == spec
    once = spec_from_pb(spec_to_pb(spec))
    assert spec_from_pb(spec_to_pb(once)) == once


@SETTINGS
@given(Strategies(wire=True).spec())
def test_exact_protobuf_round_trip(spec: Spec) -> None:
    validate(spec)
    message = spec_to_pb(spec)
    assert spec_from_pb(oci_pb2.Spec.FromString(message.SerializeToString())) == spec
    assert spec_from_json(spec_to_json(spec)) == spec
