"""The OCI runtime-spec model, config.json loading and checking, and runc's default spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The model classes are imported eagerly; the functions load their modules on first use, so that the
# guest, which needs only the model and kata.oci.translate, pays for neither json nor the rule tables.
# Protobuf translation lives in kata.oci.translate: importing kata.oci never imports protobuf.
from kata.oci.model import (
    CPU,
    OCI_VERSION,
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
)

if TYPE_CHECKING:
    from kata.oci.defaults import default_spec
    from kata.oci.load import (
        Bundle,
        load_bundle,
        load_process,
        process_from_json,
        process_to_json,
        spec_from_json,
        spec_to_json,
    )
    from kata.oci.rules import validate

_LAZY = {
    "default_spec": "kata.oci.defaults",
    "Bundle": "kata.oci.load",
    "load_bundle": "kata.oci.load",
    "load_process": "kata.oci.load",
    "process_from_json": "kata.oci.load",
    "process_to_json": "kata.oci.load",
    "spec_from_json": "kata.oci.load",
    "spec_to_json": "kata.oci.load",
    "validate": "kata.oci.rules",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import the module of a lazily exported function on first use."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

__all__ = [
    "CPU",
    "OCI_VERSION",
    "BlockIO",
    "Box",
    "Bundle",
    "Capabilities",
    "Device",
    "DeviceCgroup",
    "Hook",
    "Hooks",
    "HugepageLimit",
    "IDMapping",
    "IntelRdt",
    "InterfacePriority",
    "Linux",
    "Memory",
    "Mount",
    "Namespace",
    "Network",
    "Personality",
    "Pids",
    "Process",
    "Rdma",
    "Resources",
    "Rlimit",
    "Root",
    "Seccomp",
    "SeccompArg",
    "Spec",
    "Syscall",
    "ThrottleDevice",
    "User",
    "WeightDevice",
    "default_spec",
    "load_bundle",
    "load_process",
    "process_from_json",
    "process_to_json",
    "spec_from_json",
    "spec_to_json",
    "validate",
]
