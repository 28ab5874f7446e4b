"""OCI config.json: round trips of runc's default spec and of a config setting every field, bundles."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kata.errors import OciError
from kata.oci import (
    OCI_VERSION,
    Process,
    Spec,
    default_spec,
    load_bundle,
    load_process,
    process_from_json,
    process_to_json,
    spec_from_json,
    spec_to_json,
)
from kata.oci import linux as linux_module
from kata.oci import model as model_module
from kata.oci import resources as resources_module

_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]

# What `runc spec` prints (runc main, libcontainer/specconv/example.go) on a cgroup v2 host.
RUNC_DEFAULT: dict[str, Any] = {
    "ociVersion": OCI_VERSION,
    "process": {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {"bounding": _CAPS, "effective": _CAPS, "permitted": _CAPS},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": [*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": _NOSUID_NOEXEC_NODEV},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NOSUID_NOEXEC_NODEV, "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*_NOSUID_NOEXEC_NODEV, "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}

_IDMAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]
_THROTTLE = [{"major": 8, "minor": 0, "rate": 104857600}]

# A config.json that sets every field of the model (test_rich_config_sets_every_field keeps it so),
# with no zero or empty values: every optional number is non-zero.
RICH_CONFIG: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [5, 10], "username": "alice"},
        "args": ["/bin/sh", "-c", "echo hi"],
        "commandLine": "sh -c 'echo hi'",
        "env": ["PATH=/usr/bin:/bin", "TERM=xterm", "EMPTY="],
        "cwd": "/home/alice",
        "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_KILL"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_CHOWN"],
            "permitted": ["CAP_CHOWN", "CAP_KILL"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        },
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
            {"type": "RLIMIT_CORE", "hard": 18446744073709551615, "soft": 1},
        ],
        "noNewPrivileges": True,
        "apparmorProfile": "docker-default",
        "oomScoreAdj": -500,
        "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2",
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "web-1",
    "domainname": "example.com",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "none", "source": "/srv/data", "options": ["rbind", "ro", "idmap"],
         "uidMappings": _IDMAP, "gidMappings": _IDMAP},
    ],
    "hooks": {
        "prestart": [{"path": "/usr/bin/netns-setup", "args": ["netns-setup", "--up"], "env": ["DEBUG=1"],
                      "timeout": 5}],
        "createRuntime": [{"path": "/usr/bin/create-runtime"}],
        "createContainer": [{"path": "/usr/bin/create-container"}],
        "startContainer": [{"path": "/usr/bin/start-container"}],
        "poststart": [{"path": "/usr/bin/poststart"}],
        "poststop": [{"path": "/usr/bin/poststop", "timeout": 30}],
    },
    "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "abc"},
    "linux": {
        "uidMappings": _IDMAP,
        "gidMappings": _IDMAP,
        "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "65536"},
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            ],
            "memory": {"limit": 536870912, "reservation": 268435456, "swap": -1, "kernel": 67108864,
                       "kernelTCP": 1048576, "swappiness": 10, "disableOOMKiller": True, "useHierarchy": True,
                       "checkBeforeUpdate": True},
            "cpu": {"shares": 1024, "quota": 50000, "burst": 10000, "period": 100000,
                    "realtimeRuntime": 950000, "realtimePeriod": 1000000, "cpus": "0-3", "mems": "0",
                    "idle": 1},
            "pids": {"limit": 100},
            "blockIO": {
                "weight": 500,
                "leafWeight": 300,
                "weightDevice": [{"major": 8, "minor": 16, "weight": 600, "leafWeight": 200}],
                "throttleReadBpsDevice": _THROTTLE,
                "throttleWriteBpsDevice": _THROTTLE,
                "throttleReadIOPSDevice": _THROTTLE,
                "throttleWriteIOPSDevice": _THROTTLE,
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
            "unified": {"io.weight": "default 100", "memory.high": "max"},
        },
        "cgroupsPath": "/kata/abc",
        "namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}, {"type": "time"},
        ],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438,
                     "uid": 1000, "gid": 1000}],
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "listenerPath": "/run/seccomp-agent.sock",
            "listenerMetadata": "pod=abc",
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 8, "valueTwo": 4294967295, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            ],
        },
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "mountLabel": "system_u:object_r:container_file_t:s0:c1,c2",
        "intelRdt": {"closID": "guaranteed", "l3CacheSchema": "L3:0=7f0", "memBwSchema": "MB:0=20",
                     "enableCMT": True, "enableMBM": True},
        "personality": {"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]},
    },
}


def rich_spec() -> Spec:
    return spec_from_json(copy.deepcopy(RICH_CONFIG))


def test_default_spec_is_runcs() -> None:
    assert spec_to_json(default_spec()) == RUNC_DEFAULT


def test_runc_default_round_trips() -> None:
    spec = spec_from_json(RUNC_DEFAULT)
    assert spec == default_spec()
    assert spec_to_json(spec) == RUNC_DEFAULT


def test_default_spec_without_cgroup_namespace() -> None:
    linux = default_spec(cgroup_namespace=False).linux
    assert linux is not None
    assert [ns.type for ns in linux.namespaces] == ["pid", "network", "ipc", "uts", "mount"]


def test_rootless_default_spec_is_runcs_to_rootless() -> None:
    data = spec_to_json(default_spec(rootless=True, host_uid=1000, host_gid=100))
    linux = data["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "cgroup", "user"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": 100, "size": 1}]
    assert "resources" not in linux
    assert data["mounts"][2]["options"] == ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    assert data["mounts"][5] == {"destination": "/sys", "type": "none", "source": "/sys",
                                 "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    assert spec_from_json(data) == default_spec(rootless=True, host_uid=1000, host_gid=100)


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_default_spec_matches_installed_runc(tmp_path: Path) -> None:
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path)], check=True, timeout=30)
    theirs = json.loads((tmp_path / "config.json").read_text())
    ours = spec_to_json(default_spec())
    # Older runc releases still add ambient capabilities; the cgroup namespace depends on the host.
    for data in (theirs, ours):
        data.pop("ociVersion")
        data["process"]["capabilities"].pop("ambient", None)
        data["linux"]["namespaces"] = [ns for ns in data["linux"]["namespaces"] if ns["type"] != "cgroup"]
    assert ours == theirs


def test_rich_config_round_trips() -> None:
    spec = rich_spec()
    assert spec_to_json(spec) == RICH_CONFIG
    assert spec_from_json(spec_to_json(spec)) == spec


def _model_classes() -> set[type]:
    classes: set[type] = set()
    for module in (model_module, linux_module, resources_module):
        for name in module.__all__:
            value = getattr(module, name)
            if dataclasses.is_dataclass(value) and isinstance(value, type):
                classes.add(value)
    return classes


def _set_fields(value: object, found: set[tuple[str, str]]) -> None:
    if isinstance(value, tuple):
        for item in value:
            _set_fields(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _set_fields(item, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if item != default:
                found.add((type(value).__name__, f.name))
            _set_fields(item, found)


def test_rich_config_sets_every_field() -> None:
    every = {(cls.__name__, f.name) for cls in _model_classes() for f in dataclasses.fields(cls)}
    found: set[tuple[str, str]] = set()
    _set_fields(rich_spec(), found)
    assert every - found == set()


def test_unknown_keys_are_ignored_and_annotations_kept() -> None:
    data = copy.deepcopy(RUNC_DEFAULT)
    data["windows"] = {"layerFolders": []}
    data["process"]["scheduler"] = {"policy": "SCHED_OTHER"}
    data["linux"]["timeOffsets"] = {"monotonic": {"secs": 1}}
    data["annotations"] = {"org.example/anything": "kept"}
    spec = spec_from_json(data)
    assert spec.annotations == {"org.example/anything": "kept"}
    data = spec_to_json(spec)
    assert "windows" not in data and "scheduler" not in data["process"] and "timeOffsets" not in data["linux"]


def test_null_means_absent() -> None:
    data = copy.deepcopy(RUNC_DEFAULT)
    data["hooks"] = None
    data["process"]["env"] = None
    data["process"]["capabilities"] = None
    spec = spec_from_json(data)
    assert spec.hooks is None
    assert spec.process is not None and spec.process.env == () and spec.process.capabilities is None


def test_zero_optional_values_are_kept_in_json() -> None:
    data = copy.deepcopy(RUNC_DEFAULT)
    data["process"]["oomScoreAdj"] = 0
    data["linux"]["resources"]["memory"] = {"swappiness": 0, "disableOOMKiller": False}
    assert spec_to_json(spec_from_json(data)) == data


def test_empty_lists_are_left_out_when_dumping() -> None:
    data = copy.deepcopy(RUNC_DEFAULT)
    data["mounts"][0]["options"] = []
    data["linux"]["devices"] = []
    dumped = spec_to_json(spec_from_json(data))
    assert "options" not in dumped["mounts"][0] and "devices" not in dumped["linux"]


def test_process_json_round_trips(tmp_path: Path) -> None:
    data = RICH_CONFIG["process"]
    process = process_from_json(data)
    assert isinstance(process, Process)
    assert process_to_json(process) == data
    path = tmp_path / "process.json"
    path.write_text(json.dumps(data))
    assert load_process(path) == process


def test_load_bundle(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(RICH_CONFIG, indent="\t"))
    bundle = load_bundle(tmp_path)
    assert bundle.path == str(tmp_path)
    assert bundle.spec == rich_spec()
    assert bundle.rootfs == str(tmp_path / "rootfs")


def test_load_bundle_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(RUNC_DEFAULT))
    monkeypatch.chdir(tmp_path)
    assert load_bundle("b").path == str(tmp_path / "b")


def test_absolute_root_path_is_used_as_is(tmp_path: Path) -> None:
    data = copy.deepcopy(RUNC_DEFAULT)
    data["root"]["path"] = "/var/lib/rootfs"
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_bundle(tmp_path).rootfs == "/var/lib/rootfs"


def test_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(OciError, match=r"^bundle .*/missing: not a directory$"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(OciError, match=r"^config.json: cannot read .*/config.json: No such file or direc"):
        load_bundle(tmp_path)
