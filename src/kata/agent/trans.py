"""The one place where the host side translates agent requests to and from protobuf."""

from __future__ import annotations

from kata.agent.types import (
    AgentVersion,
    ARPNeighbor,
    ContainerRequest,
    ExecRequest,
    GuestDetails,
    Interface,
    IPAddress,
    KernelModule,
    Route,
    SandboxRequest,
    Storage,
)
from kata.oci import Resources
from kata.oci.translate import process_to_pb, resources_to_pb, spec_to_pb
from kata.protocols.pb import agent_pb2, health_pb2, types_pb2

__all__ = [
    "container_to_pb",
    "exec_to_pb",
    "guest_details_from_pb",
    "interface_from_pb",
    "interface_to_pb",
    "neighbor_to_pb",
    "route_from_pb",
    "route_to_pb",
    "sandbox_to_pb",
    "storage_to_pb",
    "update_to_pb",
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


def update_to_pb(container_id: str, resources: Resources) -> agent_pb2.UpdateContainerRequest:
    """UpdateContainer's request.

    Raises:
        OciError: a number does not fit its protobuf field.
    """
    return agent_pb2.UpdateContainerRequest(container_id=container_id, resources=resources_to_pb(resources))


def guest_details_from_pb(pb: agent_pb2.GuestDetailsResponse) -> GuestDetails:
    return GuestDetails(mem_block_size_bytes=pb.mem_block_size_bytes,
                        support_mem_hotplug_probe=pb.support_mem_hotplug_probe,
                        agent_version=pb.agent_details.version)


def version_from_pb(pb: health_pb2.VersionCheckResponse) -> AgentVersion:
    return AgentVersion(grpc_version=pb.grpc_version, agent_version=pb.agent_version)


def _ip_to_pb(ip: IPAddress) -> types_pb2.IPAddress:
    return types_pb2.IPAddress(family=types_pb2.v6 if ":" in ip.address else types_pb2.v4, address=ip.address,
                               mask="" if ip.prefix_length is None else str(ip.prefix_length))


def _ip_from_pb(pb: types_pb2.IPAddress) -> IPAddress:
    return IPAddress(address=pb.address, prefix_length=int(pb.mask) if pb.mask.isdigit() else None)


def interface_to_pb(interface: Interface) -> types_pb2.Interface:
    # Kata's runtimes send the guest name as both device and name.
    return types_pb2.Interface(
        device=interface.name, name=interface.name, IPAddresses=[_ip_to_pb(a) for a in interface.addresses],
        mtu=interface.mtu, hwAddr=interface.hw_addr, devicePath=interface.device_path, type=interface.link_type,
        raw_flags=interface.raw_flags,
    )


def interface_from_pb(pb: types_pb2.Interface) -> Interface:
    return Interface(name=pb.name, hw_addr=pb.hwAddr, mtu=pb.mtu,
                     addresses=tuple(_ip_from_pb(a) for a in pb.IPAddresses), device_path=pb.devicePath,
                     link_type=pb.type, raw_flags=pb.raw_flags)


def route_to_pb(route: Route) -> types_pb2.Route:
    ipv6 = route.family == 6 or any(":" in text for text in (route.dest, route.gateway, route.source))
    return types_pb2.Route(dest=route.dest, gateway=route.gateway, device=route.device, source=route.source,
                           scope=route.scope, family=types_pb2.v6 if ipv6 else types_pb2.v4, flags=route.flags,
                           mtu=route.mtu)


def route_from_pb(pb: types_pb2.Route) -> Route:
    return Route(dest=pb.dest, gateway=pb.gateway, device=pb.device, source=pb.source, scope=pb.scope,
                 family=6 if pb.family == types_pb2.v6 else 4, flags=pb.flags, mtu=pb.mtu)


def neighbor_to_pb(neighbor: ARPNeighbor) -> types_pb2.ARPNeighbor:
    return types_pb2.ARPNeighbor(toIPAddress=_ip_to_pb(IPAddress(neighbor.address)), device=neighbor.device,
                                 lladdr=neighbor.lladdr, state=neighbor.state, flags=neighbor.flags)
