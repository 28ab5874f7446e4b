"""grpc.AgentService container and process RPCs, translated onto the guest ContainerRuntime."""

from __future__ import annotations

from google.protobuf import empty_pb2

from kata.guest.services.errors import rpc
from kata.guest.services.guest_ops import resolve_inside
from kata.guest.services.stats import stats_to_pb
from kata.oci.translate import process_from_pb, resources_from_pb, spec_from_pb
from kata.protocols.pb import agent_pb2
from kata.ttrpc.status import InvalidArgumentError, OutOfRangeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime import ContainerRuntime
    from kata.guest.services.storage import StorageManager
    from kata.ttrpc.dispatch import CallContext, MethodSpec

__all__ = ["EOF_MESSAGE", "ContainerService"]

EMPTY = empty_pb2.Empty
EOF_MESSAGE = "EOF"
MAX_READ = 1 << 20


class ContainerService:
    """Handlers of the container RPCs; storages a container brings are mounted before it is created."""

    def __init__(self, runtime: ContainerRuntime, storage: StorageManager) -> None:
        self.runtime = runtime
        self.storage = storage

    @rpc("CreateContainer")
    def create_container(self, request: agent_pb2.CreateContainerRequest,
                         context: CallContext) -> empty_pb2.Empty:
        del context
        if not request.HasField("OCI"):
            raise InvalidArgumentError("CreateContainer: no OCI spec in the request")
        spec = spec_from_pb(request.OCI)
        cid = request.container_id
        self.storage.mount_all(list(request.storages), owner=cid)
        try:
            if spec.root is None:
                raise InvalidArgumentError("CreateContainer: the OCI spec has no root")
            resolve_inside(spec.root.path, self.storage.allowed_root, "CreateContainer: root.path")
            self.runtime.create_container(cid, spec)
        except BaseException:
            self.storage.unmount_owner(cid)
            raise
        return EMPTY()

    @rpc("StartContainer")
    def start_container(self, request: agent_pb2.StartContainerRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.start_container(request.container_id)
        return EMPTY()

    @rpc("RemoveContainer")
    def remove_container(self, request: agent_pb2.RemoveContainerRequest,
                         context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.remove_container(request.container_id, float(request.timeout))
        self.storage.unmount_owner(request.container_id)
        return EMPTY()

    @rpc("ExecProcess")
    def exec_process(self, request: agent_pb2.ExecProcessRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        if not request.exec_id:
            raise InvalidArgumentError("ExecProcess: exec_id is empty")
        self.runtime.exec_process(request.container_id, request.exec_id, process_from_pb(request.process))
        return EMPTY()

    @rpc("SignalProcess")
    def signal_process(self, request: agent_pb2.SignalProcessRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.signal_process(request.container_id, request.exec_id, request.signal)
        return EMPTY()

    @rpc("WaitProcess")
    def wait_process(self, request: agent_pb2.WaitProcessRequest,
                     context: CallContext) -> agent_pb2.WaitProcessResponse:
        status = self.runtime.wait_process(request.container_id, request.exec_id, context.time_remaining())
        return agent_pb2.WaitProcessResponse(status=status)

    def _read(self, request: agent_pb2.ReadStreamRequest, stdout: bool) -> agent_pb2.ReadStreamResponse:
        size = min(request.len or MAX_READ, MAX_READ)
        read = self.runtime.read_stdout if stdout else self.runtime.read_stderr
        data = read(request.container_id, request.exec_id, size)
        if not data:
            # End of stream is an error answer, as Kata's agent gives, so Go's io.Copy stops.
            raise OutOfRangeError(EOF_MESSAGE)
        return agent_pb2.ReadStreamResponse(data=data)

    @rpc("ReadStdout")
    def read_stdout(self, request: agent_pb2.ReadStreamRequest,
                    context: CallContext) -> agent_pb2.ReadStreamResponse:
        del context
        return self._read(request, stdout=True)

    @rpc("ReadStderr")
    def read_stderr(self, request: agent_pb2.ReadStreamRequest,
                    context: CallContext) -> agent_pb2.ReadStreamResponse:
        del context
        return self._read(request, stdout=False)

    @rpc("WriteStdin")
    def write_stdin(self, request: agent_pb2.WriteStreamRequest,
                    context: CallContext) -> agent_pb2.WriteStreamResponse:
        del context
        if not request.data:  # newer Kata runtimes send an empty write to close stdin
            self.runtime.close_stdin(request.container_id, request.exec_id)
            return agent_pb2.WriteStreamResponse(len=0)
        written = self.runtime.write_stdin(request.container_id, request.exec_id, request.data)
        return agent_pb2.WriteStreamResponse(len=written)

    @rpc("CloseStdin")
    def close_stdin(self, request: agent_pb2.CloseStdinRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.close_stdin(request.container_id, request.exec_id)
        return EMPTY()

    @rpc("TtyWinResize")
    def tty_win_resize(self, request: agent_pb2.TtyWinResizeRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.resize_tty(request.container_id, request.exec_id, request.row, request.column)
        return EMPTY()

    @rpc("PauseContainer")
    def pause_container(self, request: agent_pb2.PauseContainerRequest,
                        context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.pause_container(request.container_id)
        return EMPTY()

    @rpc("ResumeContainer")
    def resume_container(self, request: agent_pb2.ResumeContainerRequest,
                         context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.resume_container(request.container_id)
        return EMPTY()

    @rpc("StatsContainer")
    def stats_container(self, request: agent_pb2.StatsContainerRequest,
                        context: CallContext) -> agent_pb2.StatsContainerResponse:
        del context
        return stats_to_pb(self.runtime.stats_container(request.container_id))

    @rpc("UpdateContainer")
    def update_container(self, request: agent_pb2.UpdateContainerRequest,
                         context: CallContext) -> empty_pb2.Empty:
        del context
        self.runtime.update_container(request.container_id, resources_from_pb(request.resources))
        return EMPTY()

    @rpc("GetOOMEvent")
    def get_oom_event(self, request: agent_pb2.GetOOMEventRequest, context: CallContext) -> agent_pb2.OOMEvent:
        del request
        return agent_pb2.OOMEvent(container_id=self.runtime.next_oom_event(context.time_remaining()))

    def methods(self) -> dict[str, MethodSpec]:
        """The container part of the grpc.AgentService method table."""
        a = agent_pb2
        return {
            "CreateContainer": (a.CreateContainerRequest, EMPTY, self.create_container),
            "StartContainer": (a.StartContainerRequest, EMPTY, self.start_container),
            "RemoveContainer": (a.RemoveContainerRequest, EMPTY, self.remove_container),
            "ExecProcess": (a.ExecProcessRequest, EMPTY, self.exec_process),
            "SignalProcess": (a.SignalProcessRequest, EMPTY, self.signal_process),
            "WaitProcess": (a.WaitProcessRequest, a.WaitProcessResponse, self.wait_process),
            "ReadStdout": (a.ReadStreamRequest, a.ReadStreamResponse, self.read_stdout),
            "ReadStderr": (a.ReadStreamRequest, a.ReadStreamResponse, self.read_stderr),
            "WriteStdin": (a.WriteStreamRequest, a.WriteStreamResponse, self.write_stdin),
            "CloseStdin": (a.CloseStdinRequest, EMPTY, self.close_stdin),
            "TtyWinResize": (a.TtyWinResizeRequest, EMPTY, self.tty_win_resize),
            "PauseContainer": (a.PauseContainerRequest, EMPTY, self.pause_container),
            "ResumeContainer": (a.ResumeContainerRequest, EMPTY, self.resume_container),
            "StatsContainer": (a.StatsContainerRequest, a.StatsContainerResponse, self.stats_container),
            "UpdateContainer": (a.UpdateContainerRequest, EMPTY, self.update_container),
            "GetOOMEvent": (a.GetOOMEventRequest, a.OOMEvent, self.get_oom_event),
        }
