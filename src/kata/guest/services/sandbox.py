"""The guest's one sandbox: CreateSandbox/DestroySandbox and the sandbox-wide RPCs."""

from __future__ import annotations

import os
import socket
import threading

from google.protobuf import empty_pb2

from kata import __version__
from kata.guest.services import guest_ops
from kata.guest.services.errors import rpc
from kata.protocols.pb import agent_pb2
from kata.ttrpc.status import AlreadyExistsError, FailedPreconditionError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kata.guest.log import GuestLog
    from kata.guest.services.storage import StorageManager
    from kata.ttrpc.dispatch import CallContext, MethodSpec

__all__ = ["GuestSandbox"]

EMPTY = empty_pb2.Empty
STORAGE_HANDLERS = ("virtio-fs", "9p", "blk", "ephemeral", "local", "bind")


class GuestSandbox:
    """Sandbox-wide state: id, hostname, storages; ``stop`` ends serving (init then powers off)."""

    def __init__(self, log: GuestLog, storage: StorageManager, stop: Callable[[], None], *,
                 resolv_conf: str = "/etc/resolv.conf", init_daemon: bool = True) -> None:
        self.log = log
        self.storage = storage
        self.stop = stop
        self.resolv_conf = resolv_conf
        self.init_daemon = init_daemon
        self.sandbox_id = ""
        self.hostname = ""
        self.lock = threading.Lock()
        self.teardown: list[Callable[[], None]] = []

    @rpc("CreateSandbox")
    def create_sandbox(self, request: agent_pb2.CreateSandboxRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        with self.lock:
            if self.sandbox_id:
                raise AlreadyExistsError(f"CreateSandbox: sandbox {self.sandbox_id} already exists")
            guest_ops.bring_up_loopback()  # the containers' localhost (a no-op where it is up already)
            if request.hostname:
                socket.sethostname(request.hostname)
            if request.dns:
                self._write_resolv_conf(list(request.dns))
            self.storage.mount_all(list(request.storages), owner="")
            self.sandbox_id = request.sandbox_id or "sandbox"
            self.hostname = request.hostname
            self.log.sandbox_id = self.sandbox_id
        self.log.info("sandbox created", hostname=request.hostname, storages=len(request.storages))
        return EMPTY()

    def _write_resolv_conf(self, lines: list[str]) -> None:
        # Kata sends whole resolv.conf lines ("nameserver 1.1.1.1", "search x"); accept bare addresses too.
        tmp = f"{self.resolv_conf}.tmp"
        with open(tmp, "w") as fh:
            fh.write("\n".join(line if " " in line else f"nameserver {line}" for line in lines) + "\n")
        os.replace(tmp, self.resolv_conf)

    @rpc("DestroySandbox")
    def destroy_sandbox(self, request: agent_pb2.DestroySandboxRequest, context: CallContext) -> empty_pb2.Empty:
        del request, context
        with self.lock:
            if not self.sandbox_id:
                raise FailedPreconditionError("DestroySandbox: no sandbox was created")
            for undo in reversed(self.teardown):
                undo()
            self.storage.unmount_all()
        self.log.info("sandbox destroyed: stopping the agent")
        self.stop()  # the answer still goes out: the server drains before it stops
        return EMPTY()

    @rpc("GetGuestDetails")
    def get_guest_details(self, request: agent_pb2.GuestDetailsRequest,
                          context: CallContext) -> agent_pb2.GuestDetailsResponse:
        del context
        details = agent_pb2.AgentDetails(version=__version__, init_daemon=self.init_daemon,
                                         storage_handlers=list(STORAGE_HANDLERS), supports_seccomp=False)
        return agent_pb2.GuestDetailsResponse(
            mem_block_size_bytes=guest_ops.memory_block_size() if request.mem_block_size else 0,
            agent_details=details,
            support_mem_hotplug_probe=request.mem_hotplug_probe and os.path.exists(
                f"{guest_ops.SYS_MEMORY}/probe"),
        )

    @rpc("SetGuestDateTime")
    def set_guest_date_time(self, request: agent_pb2.SetGuestDateTimeRequest,
                            context: CallContext) -> empty_pb2.Empty:
        del context
        guest_ops.set_clock(request.Sec, request.Usec)
        return EMPTY()

    @rpc("ReseedRandomDev")
    def reseed_random_dev(self, request: agent_pb2.ReseedRandomDevRequest,
                          context: CallContext) -> empty_pb2.Empty:
        del context
        guest_ops.reseed_random(request.data)
        return EMPTY()

    @rpc("CopyFile")
    def copy_file(self, request: agent_pb2.CopyFileRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        guest_ops.copy_file_chunk(request.path, request.data, offset=request.offset,
                                  file_size=request.file_size, file_mode=request.file_mode,
                                  dir_mode=request.dir_mode, uid=request.uid, gid=request.gid,
                                  root=self.storage.allowed_root)
        return EMPTY()

    @rpc("OnlineCPUMem")
    def online_cpu_mem(self, request: agent_pb2.OnlineCPUMemRequest, context: CallContext) -> empty_pb2.Empty:
        del context
        guest_ops.online_cpus_and_memory(cpu_only=request.cpu_only)
        return EMPTY()

    @rpc("MemHotplugByProbe")
    def mem_hotplug_by_probe(self, request: agent_pb2.MemHotplugByProbeRequest,
                             context: CallContext) -> empty_pb2.Empty:
        del context
        guest_ops.probe_memory(list(request.memHotplugProbeAddr))
        return EMPTY()

    @rpc("GetMetrics")
    def get_metrics(self, request: agent_pb2.GetMetricsRequest, context: CallContext) -> agent_pb2.Metrics:
        del request, context
        return agent_pb2.Metrics(metrics=guest_metrics())

    def methods(self) -> dict[str, MethodSpec]:
        """The sandbox-wide part of the grpc.AgentService method table."""
        return {
            "CreateSandbox": (agent_pb2.CreateSandboxRequest, EMPTY, self.create_sandbox),
            "DestroySandbox": (agent_pb2.DestroySandboxRequest, EMPTY, self.destroy_sandbox),
            "GetGuestDetails": (agent_pb2.GuestDetailsRequest, agent_pb2.GuestDetailsResponse,
                                self.get_guest_details),
            "SetGuestDateTime": (agent_pb2.SetGuestDateTimeRequest, EMPTY, self.set_guest_date_time),
            "ReseedRandomDev": (agent_pb2.ReseedRandomDevRequest, EMPTY, self.reseed_random_dev),
            "CopyFile": (agent_pb2.CopyFileRequest, EMPTY, self.copy_file),
            "OnlineCPUMem": (agent_pb2.OnlineCPUMemRequest, EMPTY, self.online_cpu_mem),
            "MemHotplugByProbe": (agent_pb2.MemHotplugByProbeRequest, EMPTY, self.mem_hotplug_by_probe),
            "GetMetrics": (agent_pb2.GetMetricsRequest, agent_pb2.Metrics, self.get_metrics),
        }


def guest_metrics(meminfo: str = "/proc/meminfo", loadavg: str = "/proc/loadavg") -> str:
    """A few guest gauges in Prometheus text format."""
    lines = ["# TYPE kata_guest_meminfo_bytes gauge"]
    try:
        with open(meminfo) as fh:
            for row in fh:
                name, _, rest = row.partition(":")
                fields = rest.split()
                if fields and name in ("MemTotal", "MemFree", "MemAvailable", "Cached"):
                    lines.append(f'kata_guest_meminfo_bytes{{item="{name}"}} {int(fields[0]) * 1024}')
        with open(loadavg) as fh:
            lines += ["# TYPE kata_guest_load1 gauge", f"kata_guest_load1 {fh.read().split()[0]}"]
    except OSError:
        pass
    return "\n".join(lines) + "\n"
