"""Malformed config.json: each case gives exactly one line naming the JSON path of the problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kata.errors import OciError
from kata.oci import Process, load_bundle, load_process, process_from_json, spec_from_json, validate

BASE: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    },
    "root": {"path": "rootfs"},
    "hostname": "box",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
    ],
    "hooks": {"prestart": [{"path": "/bin/true"}]},
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"}],
        "maskedPaths": ["/proc/kcore"],
        "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                                  "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
    },
}

DELETE = object()


def patched(path: str, value: object) -> dict[str, Any]:
    """BASE with the value at a dotted path (list indexes as numbers) replaced, appended or deleted."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    elif isinstance(node, list) and key == len(node):
        node.append(value)
    else:
        node[key] = value
    return data


CASES: list[tuple[str, object, str]] = [
    # JSON types and ranges
    ("ociVersion", DELETE, "ociVersion: required"),
    ("ociVersion", 1, "ociVersion: expected a string, got 1"),
    ("ociVersion", "", "ociVersion: must not be empty"),
    ("root", DELETE, "root: required"),
    ("root.path", DELETE, "root.path: required"),
    ("root.path", "", "root.path: must not be empty"),
    ("root.readonly", "yes", 'root.readonly: expected a boolean, got "yes"'),
    ("process", [], "process: expected an object, got []"),
    ("process.args.0", 3, "process.args[0]: expected a string, got 3"),
    ("process.args", "sh", 'process.args: expected an array, got "sh"'),
    ("process.args", [], "process.args: must not be empty"),
    ("process.args", DELETE, "process.args: must not be empty"),
    ("process.cwd", DELETE, "process.cwd: required"),
    ("process.cwd", "tmp", 'process.cwd: must be an absolute path, got "tmp"'),
    ("process.user.uid", -1, "process.user.uid: expected an unsigned 32-bit integer, got -1"),
    ("process.user.uid", True, "process.user.uid: expected an unsigned 32-bit integer, got true"),
    ("process.user.gid", 1.0, "process.user.gid: expected an unsigned 32-bit integer, got 1.0"),
    ("process.user.gid", 2**32, "process.user.gid: expected an unsigned 32-bit integer, got 4294967296"),
    ("process.user.uid", DELETE, "process.user.uid: required"),
    ("process.user.additionalGids", [1, "2"],
     'process.user.additionalGids[1]: expected an unsigned 32-bit integer, got "2"'),
    ("process.env.1", "TERM", 'process.env[1]: expected NAME=VALUE, got "TERM"'),
    ("process.env.1", "=x", 'process.env[1]: expected NAME=VALUE, got "=x"'),
    ("process.rlimits.0.type", "RLIMIT_FOO", 'process.rlimits[0].type: unknown rlimit "RLIMIT_FOO"'),
    ("process.rlimits.1", {"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1},
     'process.rlimits[1].type: duplicate rlimit "RLIMIT_NOFILE"'),
    ("process.rlimits.0.hard", -1, "process.rlimits[0].hard: expected an unsigned 64-bit integer, got -1"),
    ("process.oomScoreAdj", 1001, "process.oomScoreAdj: must be between -1000 and 1000, got 1001"),
    ("process.oomScoreAdj", 2**31, "process.oomScoreAdj: expected a 32-bit integer, got 2147483648"),
    ("process.consoleSize", {"height": 1}, "process.consoleSize.width: required"),
    ("process.capabilities.bounding", ["CAP_KILL", None],
     "process.capabilities.bounding[1]: expected a string, got null"),
    ("process.terminal", "x" * 60,
     f'process.terminal: expected a boolean, got "{"x" * 36}...'),
    # mounts
    ("mounts.1.destination", "dev", 'mounts[1].destination: must be an absolute path, got "dev"'),
    ("mounts.1.destination", DELETE, "mounts[1].destination: required"),
    ("mounts.1.source", "tmp\0fs", "mounts[1].source: must not contain a NUL byte"),
    ("mounts.0.options", "ro", 'mounts[0].options: expected an array, got "ro"'),
    ("mounts", {"destination": "/"}, 'mounts: expected an array, got {"destination": "/"}'),
    # hooks
    ("hooks.prestart.0.path", "true", 'hooks.prestart[0].path: must be an absolute path, got "true"'),
    ("hooks.prestart.0.timeout", 0, "hooks.prestart[0].timeout: must be greater than zero, got 0"),
    ("hooks.poststop", [{}], "hooks.poststop[0].path: required"),
    # annotations, sysctl
    ("annotations", {"a": 1}, 'annotations["a"]: expected a string, got 1'),
    ("linux.sysctl", {"net.ipv4.ip_forward": True},
     'linux.sysctl["net.ipv4.ip_forward"]: expected a string, got true'),
    # namespaces and id mappings
    ("linux.namespaces.0.type", "foo", 'linux.namespaces[0].type: unknown namespace type "foo"'),
    ("linux.namespaces.2", {"type": "pid"}, 'linux.namespaces[2].type: duplicate namespace type "pid"'),
    ("linux.namespaces.0.path", "proc/1/ns/pid",
     'linux.namespaces[0].path: must be an absolute path, got "proc/1/ns/pid"'),
    ("linux.namespaces.1", {"type": "ipc"}, "hostname: set without a uts namespace in linux.namespaces"),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}],
     "linux.uidMappings: set without a user namespace in linux.namespaces"),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1000}], "linux.uidMappings[0].size: required"),
    ("linux.namespaces.3", {"type": "user"},
     "linux.namespaces[3]: a new user namespace needs uidMappings or gidMappings"),
    ("linux.namespaces.2", {"type": "ipc"},
     "linux.maskedPaths: set without a mount namespace in linux.namespaces"),
    ("linux.rootfsPropagation", "bogus", 'linux.rootfsPropagation: unknown propagation "bogus"'),
    # devices and resources
    ("linux.devices.0.type", "x", 'linux.devices[0].type: unknown device type "x" (want c, b, u or p)'),
    ("linux.devices.0.path", "null", 'linux.devices[0].path: must be an absolute path, got "null"'),
    ("linux.devices.0.fileMode", -1,
     "linux.devices[0].fileMode: expected an unsigned 32-bit integer, got -1"),
    ("linux.resources.devices.0.access", "", "linux.resources.devices[0].access: must not be empty"),
    ("linux.resources.devices.0.access", "rwx",
     'linux.resources.devices[0].access: must be made of r, w and m, got "rwx"'),
    ("linux.resources.devices.0.type", "u",
     'linux.resources.devices[0].type: unknown device type "u" (want a, b or c)'),
    ("linux.resources.devices.0.allow", DELETE, "linux.resources.devices[0].allow: required"),
    ("linux.resources.memory", {"limit": "1G"},
     'linux.resources.memory.limit: expected a 64-bit integer, got "1G"'),
    ("linux.resources.blockIO", {"weight": 70000},
     "linux.resources.blockIO.weight: expected an unsigned 16-bit integer, got 70000"),
    ("linux.resources.pids", {}, "linux.resources.pids.limit: required"),
    ("linux.resources.rdma", {"mlx5": {"hcaHandles": -3}},
     'linux.resources.rdma["mlx5"].hcaHandles: expected an unsigned 32-bit integer, got -3'),
    ("linux.resources.unified", ["memory.high"],
     'linux.resources.unified: expected an object, got ["memory.high"]'),
    # seccomp
    ("linux.seccomp.defaultAction", "SCMP_ACT_BOGUS",
     'linux.seccomp.defaultAction: unknown seccomp action "SCMP_ACT_BOGUS"'),
    ("linux.seccomp.defaultAction", "",
     "linux.seccomp.defaultAction: must not be empty when syscalls are given"),
    ("linux.seccomp.architectures", ["SCMP_ARCH_Z80"],
     'linux.seccomp.architectures[0]: unknown seccomp architecture "SCMP_ARCH_Z80"'),
    ("linux.seccomp.flags", ["SECCOMP_FILTER_FLAG_FOO"],
     'linux.seccomp.flags[0]: unknown seccomp flag "SECCOMP_FILTER_FLAG_FOO"'),
    ("linux.seccomp.syscalls.0.names", [], "linux.seccomp.syscalls[0].names: must not be empty"),
    ("linux.seccomp.syscalls.0.action", "SCMP_ACT_NOPE",
     'linux.seccomp.syscalls[0].action: unknown seccomp action "SCMP_ACT_NOPE"'),
    ("linux.seccomp.syscalls.0.args.0.op", "SCMP_CMP_XX",
     'linux.seccomp.syscalls[0].args[0].op: unknown seccomp operator "SCMP_CMP_XX"'),
    ("linux.seccomp.syscalls.0.errnoRet", -1,
     "linux.seccomp.syscalls[0].errnoRet: expected an unsigned 32-bit integer, got -1"),
    # personality
    ("linux.personality", {"domain": "LINUX64"},
     'linux.personality.domain: unknown personality domain "LINUX64" (want LINUX or LINUX32)'),
]


def test_base_is_valid() -> None:
    spec_from_json(BASE)


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_malformed_config(path: str, value: object, message: str) -> None:
    with pytest.raises(OciError) as info:
        spec_from_json(patched(path, value))
    assert str(info.value) == f"config.json: {message}"


def test_document_must_be_an_object() -> None:
    with pytest.raises(OciError, match=r"^config.json: expected an object, got \[\]$"):
        spec_from_json([])


def test_seccomp_without_default_action_or_syscalls_is_allowed() -> None:
    spec_from_json(patched("linux.seccomp", {"defaultAction": ""}))


def test_user_namespace_with_path_needs_no_mappings() -> None:
    spec_from_json(patched("linux.namespaces.3", {"type": "user", "path": "/proc/1/ns/user"}))


def test_the_first_problem_in_document_order_is_reported() -> None:
    data = patched("mounts.1.destination", "dev")
    data["process"]["args"] = []
    with pytest.raises(OciError, match=r"^config.json: process.args: must not be empty$"):
        spec_from_json(data)


def test_validate_checks_a_spec_built_in_code() -> None:
    process = Process(args=(), cwd="/")
    with pytest.raises(OciError, match=r"^process.json: args: must not be empty$"):
        validate(process, source="process.json")


def test_process_json_errors_name_their_source() -> None:
    with pytest.raises(OciError, match=r'^process.json: cwd: must be an absolute path, got "x"$'):
        process_from_json({"args": ["sh"], "cwd": "x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n  "ociVersion": "1.1.0",\n  "root" {}\n}',
         "config.json: invalid JSON at line 3 column 10: Expecting ':' delimiter"),
        ("", "config.json: invalid JSON at line 1 column 1: Expecting value"),
        ('{"ociVersion": NaN}', "config.json: invalid JSON: NaN is not valid JSON"),
    ],
)
def test_invalid_json(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(OciError) as info:
        load_bundle(tmp_path)
    assert str(info.value) == message


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"ociVersion": "\xff"}')
    with pytest.raises(OciError, match=r"^config.json: not UTF-8 at byte 16$"):
        load_bundle(tmp_path)


def test_load_process_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "proc.json"
    path.write_text(json.dumps({"args": ["sh"]}))
    with pytest.raises(OciError, match=r"^proc.json: cwd: required$"):
        load_process(path)
