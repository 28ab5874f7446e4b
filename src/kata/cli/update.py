"""`kata-runtime update [-r resources.json|-] [--memory ...] ID`: new cgroup limits for the container."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]

# flag -> (section, key in the OCI LinuxResources, kind)
FLAGS = {
    "blkio_weight": ("blockIO", "weight", "int"),
    "cpu_period": ("cpu", "period", "int"),
    "cpu_quota": ("cpu", "quota", "int"),
    "cpu_share": ("cpu", "shares", "int"),
    "cpu_rt_period": ("cpu", "realtimePeriod", "int"),
    "cpu_rt_runtime": ("cpu", "realtimeRuntime", "int"),
    "cpuset_cpus": ("cpu", "cpus", "str"),
    "cpuset_mems": ("cpu", "mems", "str"),
    "kernel_memory": ("memory", "kernel", "bytes"),
    "kernel_memory_tcp": ("memory", "kernelTCP", "bytes"),
    "memory": ("memory", "limit", "bytes"),
    "memory_reservation": ("memory", "reservation", "bytes"),
    "memory_swap": ("memory", "swap", "bytes"),
    "pids_limit": ("pids", "limit", "int"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-r", "--resources", metavar="FILE", help="an OCI LinuxResources JSON file ('-': stdin)")
    for name in FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    parser.add_argument("--l3-cache-schema", default=None, help="accepted (no Intel RDT in the guest)")
    parser.add_argument("--mem-bw-schema", default=None, help="accepted (no Intel RDT in the guest)")
    parser.add_argument("container_id", metavar="ID", help="the container id")


def resources_from_flags(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The LinuxResources the flags describe (only what was given)."""
    from kata.errors import UsageError
    from kata.oci_cli.units import parse_bytes

    resources: dict[str, dict[str, object]] = {}
    for name, (section, key, kind) in FLAGS.items():
        raw = getattr(args, name)
        if raw is None:
            continue
        try:
            value: object = raw if kind == "str" else parse_bytes(raw) if kind == "bytes" else int(raw)
        except ValueError:
            raise UsageError(f"--{name.replace('_', '-')}: invalid value {raw!r}") from None
        resources.setdefault(section, {})[key] = value
    return resources


def _read_resources(path: str) -> dict[str, object]:
    from kata.oci_cli.jsonfile import load_object

    return load_object(path, what="resources")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    resources: dict[str, object] = _read_resources(args.resources) if args.resources else {}
    for section, values in resources_from_flags(args).items():
        merged = resources.get(section)
        resources[section] = {**(merged if isinstance(merged, dict) else {}), **values}
    ctx.runtime.update(args.container_id, resources)
    return 0
