"""The one place where shim v2 protobuf meets pykata's types: requests in, responses, events, metrics
and error codes out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from kata.errors import ConfigError, KataError, OciError, RpcError, StateError, UsageError
from kata.oci import Process, Resources, codec, process_from_json
from kata.protocols.events import pack_event
from kata.protocols.pb import (
    cgroups_v1_metrics_pb2 as metrics_pb2,
)
from kata.protocols.pb import (
    containerd_mount_pb2,
    containerd_task_types_pb2,
    events_task_pb2,
    shim_task_pb2,
)
from kata.sandbox import ContainerStats, SandboxLostError, SandboxNotFoundError
from kata.shim import exits
from kata.shim.exits import timestamp
from kata.shim.rootfs import RootMount
from kata.shim.tasks import Exit, ProcessStatus, StdioPaths, TaskProcess
from kata.ttrpc.status import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    StatusError,
    UnavailableError,
    UnknownError,
)

__all__ = [
    "TOPICS",
    "Event",
    "create_event",
    "delete_event",
    "delete_response",
    "exec_added_event",
    "exec_process",
    "exec_started_event",
    "exit_event",
    "metrics",
    "oom_event",
    "paused_event",
    "resumed_event",
    "rootfs_mounts",
    "start_event",
    "state_response",
    "status_error",
    "stdio_paths",
    "timestamp",
    "update_resources",
    "wait_response",
]

Event = tuple[str, Message]
"""(topic, event message) as published to containerd."""

TOPICS = {
    events_task_pb2.TaskCreate: "/tasks/create",
    events_task_pb2.TaskStart: "/tasks/start",
    events_task_pb2.TaskExit: "/tasks/exit",
    events_task_pb2.TaskDelete: "/tasks/delete",
    events_task_pb2.TaskExecAdded: "/tasks/exec-added",
    events_task_pb2.TaskExecStarted: "/tasks/exec-started",
    events_task_pb2.TaskOOM: "/tasks/oom",
    events_task_pb2.TaskPaused: "/tasks/paused",
    events_task_pb2.TaskResumed: "/tasks/resumed",
}
# containerd's typeurl name for specs.LinuxResources: types.containerd.io/opencontainers/runtime-spec/1/LinuxResources
LINUX_RESOURCES = "/LinuxResources"
_STATUS = {
    ProcessStatus.CREATED: containerd_task_types_pb2.CREATED,
    ProcessStatus.RUNNING: containerd_task_types_pb2.RUNNING,
    ProcessStatus.PAUSED: containerd_task_types_pb2.PAUSED,
    ProcessStatus.STOPPED: containerd_task_types_pb2.STOPPED,
}


def _event(message: Message) -> Event:
    return TOPICS[type(message)], message


# requests in


def stdio_paths(request: shim_task_pb2.CreateTaskRequest | shim_task_pb2.ExecProcessRequest) -> StdioPaths:
    """The stdio paths of a Create or Exec request."""
    return StdioPaths(request.stdin, request.stdout, request.stderr, request.terminal)


def rootfs_mounts(mounts: Iterable[containerd_mount_pb2.Mount]) -> tuple[RootMount, ...]:
    """CreateTaskRequest.rootfs as typed mounts."""
    return tuple(RootMount(m.type, m.source, tuple(m.options)) for m in mounts)


def exec_process(spec: any_pb2.Any, terminal: bool) -> Process:
    """ExecProcessRequest.spec: an OCI runtime-spec Process as JSON inside the Any.

    Raises:
        InvalidArgumentError: it is not valid JSON or not a valid Process.
    """
    try:
        process = process_from_json(json.loads(spec.value), source="exec spec")
    except ValueError as exc:
        raise InvalidArgumentError(f"exec spec is not JSON: {exc}") from exc
    except OciError as exc:
        raise InvalidArgumentError(str(exc)) from exc
    return replace(process, terminal=terminal) if process.terminal != terminal else process


def update_resources(message: any_pb2.Any) -> Resources:
    """UpdateTaskRequest.resources: an OCI runtime-spec LinuxResources as JSON inside the Any (what
    containerd's client and its CRI plugin send, as for exec specs; Kata's shim accepts only that type).

    Raises:
        InvalidArgumentError: another type, not JSON, or not a valid LinuxResources.
    """
    if not message.type_url.endswith(LINUX_RESOURCES):
        raise InvalidArgumentError(f"update resources: expected an OCI LinuxResources, got type {message.type_url!r}")
    try:
        return codec.decode(Resources, json.loads(message.value))
    except ValueError as exc:
        raise InvalidArgumentError(f"update resources are not JSON: {exc}") from exc
    except codec.FieldError as problem:
        raise InvalidArgumentError(problem.render("update resources")) from None


# responses out


def state_response(process: TaskProcess, bundle: str) -> shim_task_pb2.StateResponse:
    """State of a process."""
    exit = process.exit
    return shim_task_pb2.StateResponse(
        id=process.container_id, exec_id=process.exec_id, bundle=bundle, pid=process.pid,
        status=_STATUS[process.status], stdin=process.stdio.stdin, stdout=process.stdio.stdout,
        stderr=process.stdio.stderr, terminal=process.stdio.terminal,
        exit_status=exit.status if exit else 0, exited_at=timestamp(exit.at if exit else None))


def wait_response(exit: Exit) -> shim_task_pb2.WaitResponse:
    """Wait's answer."""
    return shim_task_pb2.WaitResponse(exit_status=exit.status, exited_at=timestamp(exit.at))


def delete_response(pid: int, exit: Exit) -> shim_task_pb2.DeleteResponse:
    """Delete's answer (also what ``delete`` prints after a dead shim)."""
    return exits.delete_response(pid, exit.status, exit.at)


# events out


def create_event(request: shim_task_pb2.CreateTaskRequest, pid: int) -> Event:
    """TaskCreate for a created task."""
    io = events_task_pb2.TaskIO(stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                                terminal=request.terminal)
    return _event(events_task_pb2.TaskCreate(container_id=request.id, bundle=request.bundle, rootfs=request.rootfs,
                                             io=io, checkpoint=request.checkpoint, pid=pid))


def start_event(process: TaskProcess) -> Event:
    """TaskStart (init) or TaskExecStarted (exec)."""
    if process.exec_id:
        return exec_started_event(process)
    return _event(events_task_pb2.TaskStart(container_id=process.container_id, pid=process.pid))


def exit_event(process: TaskProcess) -> Event:
    """TaskExit of a process that has exited."""
    assert process.exit is not None
    return _event(events_task_pb2.TaskExit(container_id=process.container_id, id=process.id, pid=process.pid,
                                           exit_status=process.exit.status, exited_at=timestamp(process.exit.at)))


def delete_event(process: TaskProcess, exit: Exit) -> Event:
    """TaskDelete of a task's init."""
    return _event(events_task_pb2.TaskDelete(container_id=process.container_id, id=process.id, pid=process.pid,
                                             exit_status=exit.status, exited_at=timestamp(exit.at)))


def exec_added_event(process: TaskProcess) -> Event:
    """TaskExecAdded."""
    return _event(events_task_pb2.TaskExecAdded(container_id=process.container_id, exec_id=process.exec_id))


def exec_started_event(process: TaskProcess) -> Event:
    """TaskExecStarted."""
    return _event(events_task_pb2.TaskExecStarted(container_id=process.container_id, exec_id=process.exec_id,
                                                  pid=process.pid))


def oom_event(container_id: str) -> Event:
    """TaskOOM."""
    return _event(events_task_pb2.TaskOOM(container_id=container_id))


def paused_event(container_id: str) -> Event:
    """TaskPaused."""
    return _event(events_task_pb2.TaskPaused(container_id=container_id))


def resumed_event(container_id: str) -> Event:
    """TaskResumed."""
    return _event(events_task_pb2.TaskResumed(container_id=container_id))


# metrics


_MEMORY_KEYS = {
    "pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit", "total_pgpgin": "total_pg_pg_in",
    "total_pgpgout": "total_pg_pg_out", "total_pgfault": "total_pg_fault", "total_pgmajfault": "total_pg_maj_fault",
}
_BLKIO = ("io_service_bytes_recursive", "io_serviced_recursive", "io_queued_recursive",
          "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive", "io_time_recursive",
          "sectors_recursive")


def _memory_entry(data: Any) -> metrics_pb2.MemoryEntry:
    return metrics_pb2.MemoryEntry(usage=data.usage, max=data.max_usage, failcnt=data.failcnt, limit=data.limit)


def _extras(metrics: metrics_pb2.Metrics, cgroup: Any) -> None:
    """What the agent's raw CgroupStats has beyond ContainerStats (Kata's statsToMetrics)."""
    cpu, memory = cgroup.cpu_stats, cgroup.memory_stats
    metrics.cpu.usage.per_cpu.extend(cpu.cpu_usage.percpu_usage)
    throttling = cpu.throttling_data
    metrics.cpu.throttling.CopyFrom(metrics_pb2.Throttle(periods=throttling.periods,
                                                         throttled_periods=throttling.throttled_periods,
                                                         throttled_time=throttling.throttled_time))
    metrics.memory.cache = memory.cache
    metrics.memory.swap.CopyFrom(_memory_entry(memory.swap_usage))
    metrics.memory.kernel.CopyFrom(_memory_entry(memory.kernel_usage))
    names = {f.name for f in metrics_pb2.MemoryStat.DESCRIPTOR.fields}
    for key, value in dict(memory.stats).items():
        name = _MEMORY_KEYS.get(key, key)
        if name in names and name not in ("usage", "swap", "kernel", "kernel_tcp"):
            setattr(metrics.memory, name, value)
    for name in _BLKIO:
        getattr(metrics.blkio, name).extend(
            metrics_pb2.BlkIOEntry(op=e.op, major=e.major, minor=e.minor, value=e.value)
            for e in getattr(cgroup.blkio_stats, name))
    hugetlb: Mapping[str, Any] = cgroup.hugetlb_stats
    metrics.hugetlb.extend(metrics_pb2.HugetlbStat(usage=v.usage, max=v.max_usage, failcnt=v.failcnt, pagesize=k)
                           for k, v in sorted(hugetlb.items()))


def metrics(stats: ContainerStats) -> any_pb2.Any:
    """Stats' answer: io.containerd.cgroups.v1.Metrics in an Any with the bare type URL, the form
    containerd 1.6's typeurl (``ctr task metrics``) resolves."""
    message = metrics_pb2.Metrics(
        pids=metrics_pb2.PidsStat(current=stats.pids_current, limit=stats.pids_limit),
        cpu=metrics_pb2.CPUStat(usage=metrics_pb2.CPUUsage(total=stats.cpu_usage_ns, kernel=stats.cpu_system_ns,
                                                           user=stats.cpu_user_ns)),
        memory=metrics_pb2.MemoryStat(usage=metrics_pb2.MemoryEntry(
            usage=stats.memory_usage_bytes, max=stats.memory_max_usage_bytes, limit=stats.memory_limit_bytes)))
    cgroup = getattr(stats.raw, "cgroup_stats", None)
    if cgroup is not None:
        _extras(message, cgroup)
    return pack_event(message)


# errors out


def status_error(exc: KataError) -> RpcError:
    """The gRPC status containerd should see for a pykata error (containerd's errdefs read the code)."""
    if isinstance(exc, RpcError):
        return exc
    message = str(exc)
    error: StatusError
    if isinstance(exc, SandboxNotFoundError):
        error = NotFoundError(message)
    elif isinstance(exc, SandboxLostError):
        error = UnavailableError(message)
    elif isinstance(exc, StateError):
        error = FailedPreconditionError(message)
    elif isinstance(exc, OciError | ConfigError | UsageError):
        error = InvalidArgumentError(message)
    else:
        error = UnknownError(message)
    return error
