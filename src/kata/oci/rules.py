"""Semantic checks of a Spec: what runc rejects (and a few things it only warns about), by JSON path."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kata.errors import OciError
from kata.oci.codec import FieldError, Path, json_key
from kata.oci.linux import Device, Linux, Namespace, Personality, Seccomp, SeccompArg, Syscall
from kata.oci.model import Hook, Mount, Process, Root, Spec
from kata.oci.resources import DeviceCgroup

__all__ = [
    "NAMESPACE_TYPES",
    "RLIMIT_TYPES",
    "ROOTFS_PROPAGATIONS",
    "SECCOMP_ACTIONS",
    "SECCOMP_ARCHITECTURES",
    "SECCOMP_FLAGS",
    "SECCOMP_OPERATORS",
    "problems",
    "validate",
]

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
RLIMIT_TYPES = frozenset({
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS",
    "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
})
ROOTFS_PROPAGATIONS = frozenset({
    "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable",
})
SECCOMP_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
SECCOMP_OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
SECCOMP_ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_LOONGARCH64",
})
# runc also accepts (and ignores) SECCOMP_FILTER_FLAG_TSYNC.
SECCOMP_FLAGS = frozenset({
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
})
_DEVICE_TYPES = frozenset({"c", "b", "u", "p"})
_CGROUP_DEVICE_TYPES = frozenset({"", "a", "b", "c"})
_PERSONALITY_DOMAINS = frozenset({"LINUX", "LINUX32"})
_OOM_SCORE_ADJ = range(-1000, 1001)

# A rule yields (relative path of model field names and list indexes, message).
_Where = tuple[str | int, ...]
_Found = Iterator[tuple[_Where, str]]


def _q(value: str) -> str:
    return json.dumps(value)


def _absolute(where: _Where, value: str) -> _Found:
    if not value.startswith("/"):
        yield where, f"must be an absolute path, got {_q(value)}"


def _spec(spec: Spec) -> _Found:
    if not spec.oci_version:
        yield ("oci_version",), "must not be empty"
    if spec.root is None:
        yield ("root",), "required"
    namespaces = spec.linux.namespaces if spec.linux else ()
    has_uts = any(ns.type == "uts" for ns in namespaces)
    for name, value in (("hostname", spec.hostname), ("domainname", spec.domainname)):
        if value and not has_uts:
            yield (name,), "set without a uts namespace in linux.namespaces"


def _root(root: Root) -> _Found:
    if not root.path:
        yield ("path",), "must not be empty"


def _process(process: Process) -> _Found:
    if not process.args:
        yield ("args",), "must not be empty"
    yield from _absolute(("cwd",), process.cwd)
    for i, pair in enumerate(process.env):
        name, equals, _ = pair.partition("=")
        if not name or not equals:
            yield ("env", i), f"expected NAME=VALUE, got {_q(pair)}"
    seen: set[str] = set()
    for i, rlimit in enumerate(process.rlimits):
        if rlimit.type not in RLIMIT_TYPES:
            yield ("rlimits", i, "type"), f"unknown rlimit {_q(rlimit.type)}"
        elif rlimit.type in seen:
            yield ("rlimits", i, "type"), f"duplicate rlimit {_q(rlimit.type)}"
        seen.add(rlimit.type)
    if process.oom_score_adj is not None and process.oom_score_adj not in _OOM_SCORE_ADJ:
        yield ("oom_score_adj",), f"must be between -1000 and 1000, got {process.oom_score_adj}"


def _mount(mount: Mount) -> _Found:
    yield from _absolute(("destination",), mount.destination)
    for name in ("destination", "source", "type"):
        if "\0" in getattr(mount, name):
            yield (name,), "must not contain a NUL byte"


def _hook(hook: Hook) -> _Found:
    yield from _absolute(("path",), hook.path)
    if hook.timeout is not None and hook.timeout <= 0:
        yield ("timeout",), f"must be greater than zero, got {hook.timeout}"


def _linux(linux: Linux) -> _Found:
    seen: set[str] = set()
    for i, ns in enumerate(linux.namespaces):
        if ns.type in seen:
            yield ("namespaces", i, "type"), f"duplicate namespace type {_q(ns.type)}"
        seen.add(ns.type)
    user = linux.namespace("user")
    if user is None:
        for name in ("uid_mappings", "gid_mappings"):
            if getattr(linux, name):
                yield (name,), "set without a user namespace in linux.namespaces"
    elif not user.path and not (linux.uid_mappings or linux.gid_mappings):
        index = linux.namespaces.index(user)
        yield ("namespaces", index), "a new user namespace needs uidMappings or gidMappings"
    if linux.namespace("mount") is None:
        for name in ("masked_paths", "readonly_paths"):
            if getattr(linux, name):
                yield (name,), "set without a mount namespace in linux.namespaces"
    if linux.rootfs_propagation and linux.rootfs_propagation not in ROOTFS_PROPAGATIONS:
        yield ("rootfs_propagation",), f"unknown propagation {_q(linux.rootfs_propagation)}"


def _namespace(ns: Namespace) -> _Found:
    if ns.type not in NAMESPACE_TYPES:
        yield ("type",), f"unknown namespace type {_q(ns.type)}"
    if ns.path:
        yield from _absolute(("path",), ns.path)


def _device(device: Device) -> _Found:
    yield from _absolute(("path",), device.path)
    if device.type not in _DEVICE_TYPES:
        yield ("type",), f"unknown device type {_q(device.type)} (want c, b, u or p)"


def _device_cgroup(rule: DeviceCgroup) -> _Found:
    if rule.type not in _CGROUP_DEVICE_TYPES:
        yield ("type",), f"unknown device type {_q(rule.type)} (want a, b or c)"
    if not rule.access:
        yield ("access",), "must not be empty"
    elif not set(rule.access) <= set("rwm"):
        yield ("access",), f"must be made of r, w and m, got {_q(rule.access)}"


def _seccomp(seccomp: Seccomp) -> _Found:
    if not seccomp.default_action:
        if seccomp.syscalls:
            yield ("default_action",), "must not be empty when syscalls are given"
    elif seccomp.default_action not in SECCOMP_ACTIONS:
        yield ("default_action",), f"unknown seccomp action {_q(seccomp.default_action)}"
    for i, arch in enumerate(seccomp.architectures):
        if arch not in SECCOMP_ARCHITECTURES:
            yield ("architectures", i), f"unknown seccomp architecture {_q(arch)}"
    for i, flag in enumerate(seccomp.flags):
        if flag not in SECCOMP_FLAGS:
            yield ("flags", i), f"unknown seccomp flag {_q(flag)}"


def _syscall(syscall: Syscall) -> _Found:
    if not syscall.names:
        yield ("names",), "must not be empty"
    if syscall.action not in SECCOMP_ACTIONS:
        yield ("action",), f"unknown seccomp action {_q(syscall.action)}"


def _seccomp_arg(arg: SeccompArg) -> _Found:
    if arg.op not in SECCOMP_OPERATORS:
        yield ("op",), f"unknown seccomp operator {_q(arg.op)}"


def _personality(personality: Personality) -> _Found:
    if personality.domain not in _PERSONALITY_DOMAINS:
        yield ("domain",), f"unknown personality domain {_q(personality.domain)} (want LINUX or LINUX32)"


_RULES: dict[type, Callable[[Any], _Found]] = {
    Spec: _spec,
    Root: _root,
    Process: _process,
    Mount: _mount,
    Hook: _hook,
    Linux: _linux,
    Namespace: _namespace,
    Device: _device,
    DeviceCgroup: _device_cgroup,
    Seccomp: _seccomp,
    Syscall: _syscall,
    SeccompArg: _seccomp_arg,
    Personality: _personality,
}


def _segments(where: _Where) -> Path:
    return tuple(f"[{part}]" if isinstance(part, int) else json_key(part) for part in where)


def problems(value: object, path: Path = ()) -> Iterator[FieldError]:
    """Every rule broken in a model object and the objects it holds (an object's own rules first)."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from problems(item, (*path, f"[{i}]"))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from problems(item, (*path, f"[{_q(key)}]"))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        rule = _RULES.get(type(value))
        if rule is not None:
            for where, message in rule(value):
                yield FieldError(path + _segments(where), message)
        for f in dataclasses.fields(value):
            yield from problems(getattr(value, f.name), (*path, json_key(f.name)))


def validate(obj: object, *, source: str = "config.json") -> None:
    """Check a Spec (or a Process, for exec) against runc's rules.

    Raises:
        OciError: one line naming the first problem, e.g. ``config.json: process.args: must not be empty``.
    """
    for problem in problems(obj):
        raise OciError(problem.render(source))
