"""Generated protobuf code: freshness, service tables, golden wire bytes, field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kata.protocols import services
from kata.protocols.pb import (
    agent_pb2,
    cgroups_v1_metrics_pb2,
    cgroups_v2_metrics_pb2,
    containerd_task_types_pb2,
    events_service_pb2,
    events_task_pb2,
    health_pb2,
    oci_pb2,
    runtimeoptions_pb2,
    shim_task_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "kata" / "protocols" / "pb"

TASK_RPCS = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
]

# Every RPC of grpc.AgentService in kata-containers 4.1.0 agent.proto.
AGENT_RPCS = {
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "GetDiagnosticData",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "MemAgentMemcgSet",
    "MemAgentCompactSet",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "AddSwapPath",
    "GetVolumeStats",
    "ResizeVolume",
    "SetPolicy",
}


def field_numbers(message: type[Message]) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}


def generated_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*_pb2.py*"))}


# --- (a) committed code is what the generator produces -------------------------


def test_committed_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genprotos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for package, committed_dir in (("kata/protocols/pb", COMMITTED), ("tests/pb", ROOT / "tests" / "pb")):
        fresh = generated_files(tmp_path / package)
        committed = generated_files(committed_dir)
        assert fresh, f"genprotos produced nothing in {package}"
        assert sorted(committed) == sorted(fresh), f"generated file set of {package} differs: run make protos"
        stale = [name for name, data in fresh.items() if committed[name] != data]
        assert not stale, f"stale generated code {stale}: run make protos"


# --- (b) service tables --------------------------------------------------------


def test_task_service_has_exactly_the_17_rpcs() -> None:
    assert list(services.service_methods(services.TASK_SERVICE)) == TASK_RPCS


def test_agent_service_has_every_upstream_rpc() -> None:
    assert set(services.service_methods(services.AGENT_SERVICE)) == AGENT_RPCS


def test_small_services() -> None:
    assert list(services.service_methods(services.HEALTH_SERVICE)) == ["Check", "Version"]
    assert list(services.service_methods(services.EVENTS_SERVICE)) == ["Forward"]


def test_service_methods_give_generated_classes() -> None:
    agent = services.service_methods(services.AGENT_SERVICE)
    assert agent["WaitProcess"] == (agent_pb2.WaitProcessRequest, agent_pb2.WaitProcessResponse)
    health = services.service_methods(services.HEALTH_SERVICE)
    assert health["Check"] == (health_pb2.CheckRequest, health_pb2.HealthCheckResponse)
    task = services.service_methods(services.TASK_SERVICE)
    assert task["State"] == (shim_task_pb2.StateRequest, shim_task_pb2.StateResponse)
    assert task["Kill"][1].DESCRIPTOR.full_name == "google.protobuf.Empty"
    forward = services.service_methods(services.EVENTS_SERVICE)["Forward"]
    assert forward[0] is events_service_pb2.ForwardRequest


def test_unknown_service_raises_key_error() -> None:
    with pytest.raises(KeyError):
        services.service_methods("grpc.NoSuchService")


def test_service_names_are_the_wire_names() -> None:
    assert sorted(services.SERVICES) == sorted(
        [
            "grpc.AgentService",
            "grpc.Health",
            "containerd.task.v2.Task",
            "containerd.services.events.ttrpc.v1.Events",
        ]
    )


# --- (c) golden encodings --------------------------------------------------------


def test_runtime_options_bytes() -> None:
    # field 2, wire type 2 -> tag 0x12; length 2; "/x"
    assert runtimeoptions_pb2.Options(config_path="/x").SerializeToString() == b"\x12\x02/x"
    both = runtimeoptions_pb2.Options(type_url="t", config_path="/x")
    assert both.SerializeToString() == b"\x0a\x01t\x12\x02/x"
    assert runtimeoptions_pb2.Options.DESCRIPTOR.full_name == "runtimeoptions.v1.Options"


def test_forwarded_task_exit_bytes() -> None:
    exit_event = events_task_pb2.TaskExit(container_id="c", id="c", pid=7, exit_status=1)
    exit_bytes = b"\x0a\x01c" + b"\x12\x01c" + b"\x18\x07" + b"\x20\x01"
    assert exit_event.SerializeToString() == exit_bytes

    event = any_pb2.Any()
    event.Pack(exit_event)
    type_url = b"type.googleapis.com/containerd.events.TaskExit"
    assert event.type_url == type_url.decode()
    any_bytes = b"\x0a" + bytes([len(type_url)]) + type_url + b"\x12\x0a" + exit_bytes

    envelope = events_service_pb2.Envelope(
        timestamp=Timestamp(seconds=1), namespace="k8s.io", topic="/tasks/exit", event=event
    )
    envelope_bytes = (
        b"\x0a\x02\x08\x01"  # timestamp{seconds: 1}
        + b"\x12\x06k8s.io"
        + b"\x1a\x0b/tasks/exit"
        + b"\x22"
        + bytes([len(any_bytes)])
        + any_bytes
    )
    request = events_service_pb2.ForwardRequest(envelope=envelope)
    assert request.SerializeToString() == b"\x0a" + bytes([len(envelope_bytes)]) + envelope_bytes


def test_cgroup_metrics_type_urls() -> None:
    packed = any_pb2.Any()
    packed.Pack(cgroups_v1_metrics_pb2.Metrics())
    assert packed.type_url == "type.googleapis.com/io.containerd.cgroups.v1.Metrics"
    packed.Pack(cgroups_v2_metrics_pb2.Metrics(memory=cgroups_v2_metrics_pb2.MemoryStat(usage=1)))
    assert packed.type_url == "type.googleapis.com/io.containerd.cgroups.v2.Metrics"
    # Metrics.memory is field 4 (3 unused); MemoryStat.usage is field 32 (tag 0x80 0x02).
    assert packed.value == b"\x22\x03\x80\x02\x01"


def test_create_container_request_bytes() -> None:
    request = agent_pb2.CreateContainerRequest(
        container_id="c", OCI=oci_pb2.Spec(Version="1.0.2"), stderr_port=1
    )
    # OCI is field 6 (tag 0x32); stderr_port field 11 varint (tag 0x58).
    assert request.SerializeToString() == b"\x0a\x01c" + b"\x32\x07\x0a\x051.0.2" + b"\x58\x01"


def test_shim_state_response_bytes() -> None:
    response = shim_task_pb2.StateResponse(
        id="c", status=containerd_task_types_pb2.Status.RUNNING, exec_id="e"
    )
    # status is field 4 varint (tag 0x20); exec_id is field 11 (tag 0x5a).
    assert response.SerializeToString() == b"\x0a\x01c" + b"\x20\x02" + b"\x5a\x01e"


# --- (d) field numbers of tricky messages ----------------------------------------


def test_agent_field_numbers() -> None:
    assert field_numbers(agent_pb2.CreateContainerRequest) == {
        "container_id": 1,
        "exec_id": 2,
        "string_user": 3,
        "devices": 4,
        "storages": 5,
        "OCI": 6,
        "sandbox_pidns": 7,
        "shared_mounts": 8,
        "stdin_port": 9,
        "stdout_port": 10,
        "stderr_port": 11,
    }
    assert field_numbers(agent_pb2.ExecProcessRequest) == {
        "container_id": 1,
        "exec_id": 2,
        "string_user": 3,
        "process": 4,
        "stdin_port": 5,
        "stdout_port": 6,
        "stderr_port": 7,
    }
    assert field_numbers(agent_pb2.ReseedRandomDevRequest) == {"data": 2}
    assert field_numbers(agent_pb2.FSGroup) == {"group_id": 2, "group_change_policy": 3}
    assert field_numbers(agent_pb2.Storage)["shared"] == 8
    assert field_numbers(agent_pb2.SetGuestDateTimeRequest) == {"Sec": 1, "Usec": 2}


def test_oci_field_numbers() -> None:
    assert field_numbers(oci_pb2.Spec)["Windows"] == 10
    assert field_numbers(oci_pb2.Process)["SelinuxLabel"] == 12
    assert field_numbers(oci_pb2.Linux)["IntelRdt"] == 13
    syscall = oci_pb2.LinuxSyscall.DESCRIPTOR
    assert syscall.fields_by_name["errnoret"].number == 3
    assert syscall.oneofs_by_name["ErrnoRet"].fields[0].name == "errnoret"


def test_memagent_fields_track_presence() -> None:
    config = agent_pb2.MemAgentMemcgConfig(disabled=False)
    assert config.HasField("disabled")
    assert not config.HasField("swap")
    assert config.SerializeToString() == b"\x08\x00"


def test_shim_field_numbers() -> None:
    assert field_numbers(shim_task_pb2.StateResponse) == {
        "id": 1,
        "bundle": 2,
        "pid": 3,
        "status": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "terminal": 8,
        "exit_status": 9,
        "exited_at": 10,
        "exec_id": 11,
    }
    assert field_numbers(shim_task_pb2.CreateTaskRequest)["options"] == 10
    assert field_numbers(shim_task_pb2.DeleteResponse) == {"pid": 1, "exit_status": 2, "exited_at": 3}
    assert field_numbers(shim_task_pb2.ConnectResponse) == {"shim_pid": 1, "task_pid": 2, "version": 3}
    statuses = containerd_task_types_pb2.Status.DESCRIPTOR.values
    assert [(value.name, value.number) for value in statuses] == [
        ("UNKNOWN", 0),
        ("CREATED", 1),
        ("RUNNING", 2),
        ("STOPPED", 3),
        ("PAUSED", 4),
        ("PAUSING", 5),
    ]


def test_event_field_numbers() -> None:
    assert field_numbers(events_task_pb2.TaskExit) == {
        "container_id": 1,
        "id": 2,
        "pid": 3,
        "exit_status": 4,
        "exited_at": 5,
    }
    assert field_numbers(events_task_pb2.TaskDelete) == {
        "container_id": 1,
        "pid": 2,
        "exit_status": 3,
        "exited_at": 4,
        "id": 5,
    }
    assert field_numbers(events_task_pb2.TaskCreate)["pid"] == 6
    assert field_numbers(events_service_pb2.Envelope) == {
        "timestamp": 1,
        "namespace": 2,
        "topic": 3,
        "event": 4,
    }
    assert events_service_pb2.Envelope.DESCRIPTOR.full_name == "containerd.services.events.ttrpc.v1.Envelope"


def test_events_use_containerds_bare_type_urls() -> None:
    from kata.protocols.events import envelope, pack_event, unpack_event_name
    from kata.protocols.pb import events_task_pb2

    exit_event = events_task_pb2.TaskExit(container_id="c", exit_status=3)
    packed = pack_event(exit_event)
    assert packed.type_url == "containerd.events.TaskExit"
    assert events_task_pb2.TaskExit.FromString(packed.value) == exit_event
    assert unpack_event_name(packed) == "containerd.events.TaskExit"
    wrapped = envelope("default", "/tasks/exit", exit_event)
    assert (wrapped.namespace, wrapped.topic) == ("default", "/tasks/exit")
    assert wrapped.timestamp.seconds > 0
