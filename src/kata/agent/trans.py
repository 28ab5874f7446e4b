"""The one place where the host side translates agent requests to and from protobuf."""

from __future__ import annotations

from kata.agent.types import (
    AgentVersion,
    ContainerRequest,
    ExecRequest,
    GuestDetails,
    KernelModule,
    SandboxRequest,
    Storage,
)
from kata.oci.translate import process_to_pb, spec_to_pb
from kata.protocols.pb import agent_pb2, health_pb2

__all__ = [
    "container_to_pb",
    "exec_to_pb",
    "guest_details_from_pb",
    "sandbox_to_pb",
    "storage_to_pb",
    "version_from_pb",
]


def storage_to_pb(storage: Storage) -> agent_pb2.Storage:
    return agent_pb2.Storage(
        driver=storage.driver, driver_options=list(storage.driver_options), source=storage.source,
        fstype=storage.fstype, options=list(storage.options), mount_point=storage.mount_point,
        shared=storage.shared,
    )


def _module_to_pb(module: KernelModule) -> agent_pb2.KernelModule:
    return agent_pb2.KernelModule(name=module.name, parameters=list(module.parameters))


def sandbox_to_pb(request: SandboxRequest) -> agent_pb2.CreateSandboxRequest:
    return agent_pb2.CreateSandboxRequest(
        hostname=request.hostname, dns=list(request.dns),
        storages=[storage_to_pb(s) for s in request.storages], sandbox_pidns=request.sandbox_pidns,
        sandbox_id=request.sandbox_id, guest_hook_path=request.guest_hook_path,
        kernel_modules=[_module_to_pb(m) for m in request.kernel_modules],
    )


def container_to_pb(request: ContainerRequest) -> agent_pb2.CreateContainerRequest:
    return agent_pb2.CreateContainerRequest(
        container_id=request.container_id, exec_id=request.exec_id,
        storages=[storage_to_pb(s) for s in request.storages], OCI=spec_to_pb(request.spec),
        sandbox_pidns=request.sandbox_pidns,
    )


def exec_to_pb(request: ExecRequest) -> agent_pb2.ExecProcessRequest:
    return agent_pb2.ExecProcessRequest(container_id=request.container_id, exec_id=request.exec_id,
                                        process=process_to_pb(request.process))


def guest_details_from_pb(pb: agent_pb2.GuestDetailsResponse) -> GuestDetails:
    return GuestDetails(mem_block_size_bytes=pb.mem_block_size_bytes,
                        support_mem_hotplug_probe=pb.support_mem_hotplug_probe,
                        agent_version=pb.agent_details.version)


def version_from_pb(pb: health_pb2.VersionCheckResponse) -> AgentVersion:
    return AgentVersion(grpc_version=pb.grpc_version, agent_version=pb.agent_version)
