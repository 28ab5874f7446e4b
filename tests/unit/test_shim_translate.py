"""Shim protobuf <-> pykata: runtime options, exec specs, mounts, responses, events, metrics, errors."""

from __future__ import annotations

import json

import pytest
from google.protobuf import any_pb2

from kata.errors import ConfigError, KataError, OciError, StateError
from kata.protocols.pb import (
    agent_pb2,
    cgroups_v1_metrics_pb2,
    containerd_mount_pb2,
    events_task_pb2,
    runtimeoptions_pb2,
    shim_task_pb2,
)
from kata.sandbox import SandboxLostError, SandboxNotFoundError
from kata.sandbox.stats import stats_from_agent
from kata.shim import options, translate
from kata.shim.pod import membership
from kata.shim.rootfs import MS_BIND, MS_NODEV, MS_RDONLY, MS_REC, RootfsError, RootMount, parse_options
from kata.shim.tasks import Exit, ProcessStatus, StdioPaths, TaskProcess
from kata.ttrpc.status import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnknownError,
)


def packed_options(path: str, type_url: str = "runtimeoptions.v1.Options") -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=runtimeoptions_pb2.Options(config_path=path).SerializeToString())


def test_config_path_from_the_any_containerd_writes_to_starts_stdin() -> None:
    data = packed_options("/etc/kata/configuration.toml").SerializeToString()
    assert options.config_path_from_stdin(data) == "/etc/kata/configuration.toml"
    assert options.config_path_from_stdin(b"") == ""
    prefixed = packed_options("/x.toml", "type.googleapis.com/runtimeoptions.v1.Options")
    assert options.config_path_from_any(prefixed) == "/x.toml"
    assert options.config_path_from_any(packed_options("/y", "containerd.runc.v1.Options")) == ""
    assert options.config_path_from_any(any_pb2.Any()) == ""
    with pytest.raises(InvalidArgumentError):
        options.config_path_from_stdin(b"\xff\xff")


def test_exec_spec_json_becomes_a_process() -> None:
    spec = {"args": ["sh", "-c", "echo hi"], "cwd": "/", "env": ["PATH=/bin"], "terminal": False,
            "user": {"uid": 0, "gid": 0}}
    packed = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                         value=json.dumps(spec).encode())
    process = translate.exec_process(packed, terminal=True)
    assert process.args == ("sh", "-c", "echo hi") and process.terminal
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        translate.exec_process(any_pb2.Any(value=b"{"), terminal=False)
    with pytest.raises(InvalidArgumentError):
        translate.exec_process(any_pb2.Any(value=b'{"args": 3}'), terminal=False)


def test_rootfs_mounts_and_their_options() -> None:
    pb = [containerd_mount_pb2.Mount(type="overlay", source="overlay",
                                     options=["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"])]
    assert translate.rootfs_mounts(pb) == (RootMount("overlay", "overlay", ("index=off", "workdir=/w", "upperdir=/u",
                                                                           "lowerdir=/l1:/l2")),)
    overlay = parse_options(["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"])
    assert (overlay.flags, overlay.data) == (0, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2")
    bind = parse_options(["rbind", "ro", "nodev", "rw", "defaults"])
    assert (bind.flags, bind.data) == (MS_BIND | MS_REC | MS_NODEV, "")
    assert parse_options(["bind", "ro"]).flags == MS_BIND | MS_RDONLY
    with pytest.raises(RootfsError, match="loop"):
        parse_options(["loop"])


def test_cri_annotations_pick_the_sandbox() -> None:
    assert membership("c1", {}).sandbox_id == "c1"
    sandbox = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "p1"}
    assert membership("p1", sandbox) == membership("p1", {})
    container = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "p1"}
    found = membership("c2", container)
    assert (found.sandbox_id, found.joins) == ("p1", True)
    crio = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "p2"}
    assert membership("c3", crio).sandbox_id == "p2"


def process(status: ProcessStatus = ProcessStatus.RUNNING, exec_id: str = "") -> TaskProcess:
    p = TaskProcess("c1", exec_id, StdioPaths("/f/in", "/f/out", "/f/err", False), pid=77)
    p.status = status
    return p


def test_state_wait_and_delete_responses() -> None:
    running = translate.state_response(process(), "/bundle")
    assert (running.id, running.bundle, running.pid, running.status) == ("c1", "/bundle", 77, 2)
    assert (running.stdout, running.exit_status) == ("/f/out", 0)
    done = process()
    done.set_exit(3, at=1_700_000_000.5)
    state = translate.state_response(done, "/bundle")
    assert (state.status, state.exit_status) == (3, 3)
    assert state.exited_at.ToNanoseconds() == 1_700_000_000_500_000_000
    assert translate.wait_response(Exit(3, 12.0)).exit_status == 3
    deleted = translate.delete_response(77, Exit(137, 1.0))
    assert isinstance(deleted, shim_task_pb2.DeleteResponse) and (deleted.pid, deleted.exit_status) == (77, 137)


def test_events_carry_containerds_topics() -> None:
    init, exe = process(), process(exec_id="e1")
    init.set_exit(0)
    exe.set_exit(5)
    request = shim_task_pb2.CreateTaskRequest(id="c1", bundle="/b", stdout="/f/out", terminal=True)
    events = [translate.create_event(request, 77), translate.start_event(init), translate.start_event(exe),
              translate.exec_added_event(exe), translate.exit_event(exe), translate.delete_event(init, Exit(0, 1.0)),
              translate.oom_event("c1"), translate.paused_event("c1"), translate.resumed_event("c1")]
    assert [topic for topic, _ in events] == ["/tasks/create", "/tasks/start", "/tasks/exec-started",
                                              "/tasks/exec-added", "/tasks/exit", "/tasks/delete", "/tasks/oom",
                                              "/tasks/paused", "/tasks/resumed"]
    create = events[0][1]
    assert isinstance(create, events_task_pb2.TaskCreate) and create.io.terminal and create.pid == 77
    exit_event = events[4][1]
    assert isinstance(exit_event, events_task_pb2.TaskExit)
    assert (exit_event.container_id, exit_event.id, exit_event.exit_status) == ("c1", "e1", 5)


def agent_stats() -> agent_pb2.StatsContainerResponse:
    cgroup = agent_pb2.CgroupStats(
        cpu_stats=agent_pb2.CpuStats(cpu_usage=agent_pb2.CpuUsage(total_usage=900, percpu_usage=[400, 500],
                                                                  usage_in_kernelmode=300, usage_in_usermode=600),
                                     throttling_data=agent_pb2.ThrottlingData(periods=4)),
        memory_stats=agent_pb2.MemoryStats(cache=11, usage=agent_pb2.MemoryData(usage=4096, max_usage=8192,
                                                                                limit=1 << 30),
                                           stats={"rss": 12, "pgfault": 13, "total_pgmajfault": 14, "bogus": 1}),
        pids_stats=agent_pb2.PidsStats(current=2, limit=100),
        blkio_stats=agent_pb2.BlkioStats(io_serviced_recursive=[agent_pb2.BlkioStatsEntry(major=8, op="Read",
                                                                                          value=3)]),
        hugetlb_stats={"2MB": agent_pb2.HugetlbStats(usage=5, max_usage=6)})
    return agent_pb2.StatsContainerResponse(cgroup_stats=cgroup)


def test_metrics_are_cgroup_v1_metrics_with_the_bare_type_url() -> None:
    packed = translate.metrics(stats_from_agent(agent_stats()))
    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    metrics = cgroups_v1_metrics_pb2.Metrics.FromString(packed.value)
    assert (metrics.cpu.usage.total, metrics.cpu.usage.kernel, metrics.cpu.usage.user) == (900, 300, 600)
    assert list(metrics.cpu.usage.per_cpu) == [400, 500] and metrics.cpu.throttling.periods == 4
    assert (metrics.memory.usage.usage, metrics.memory.usage.max, metrics.memory.usage.limit) == (4096, 8192, 1 << 30)
    assert (metrics.memory.cache, metrics.memory.rss, metrics.memory.pg_fault) == (11, 12, 13)
    assert metrics.memory.total_pg_maj_fault == 14
    assert (metrics.pids.current, metrics.pids.limit) == (2, 100)
    assert metrics.blkio.io_serviced_recursive[0].op == "Read"
    assert (metrics.hugetlb[0].pagesize, metrics.hugetlb[0].max) == ("2MB", 6)


@pytest.mark.parametrize(("error", "expected"), [
    (SandboxNotFoundError("gone"), NotFoundError),
    (SandboxLostError("vm died"), UnavailableError),
    (StateError("not now", state="stopped"), FailedPreconditionError),
    (OciError("bad spec"), InvalidArgumentError),
    (ConfigError("bad key"), InvalidArgumentError),
    (KataError("other"), UnknownError),
])
def test_errors_map_to_codes_containerd_understands(error: KataError, expected: type[Exception]) -> None:
    translated = translate.status_error(error)
    assert isinstance(translated, expected) and translated.message == str(error)
    already = NotFoundError("x")
    assert translate.status_error(already) is already
