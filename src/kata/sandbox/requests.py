"""Pure builders of the agent requests a sandbox sends: CreateSandbox, CreateContainer, ExecProcess."""

from __future__ import annotations

from collections.abc import Sequence

from kata.agent import ContainerRequest, ExecRequest, KernelModule, SandboxRequest, Storage
from kata.oci import Process, Spec
from kata.sandbox.errors import SandboxError
from kata.sandbox.paths import GuestLayout

__all__ = ["container_request", "exec_request", "kernel_modules", "sandbox_request", "shared_storage"]


def shared_storage(shared_fs: str, layout: GuestLayout, host_shared: str, tag: str) -> Storage:
    """How the guest mounts the sandbox's shared dir at ``layout.shared``.

    ``shared_fs`` is the configured kind (virtio-fs, virtio-9p); a host-mode agent gets a bind mount.

    Raises:
        SandboxError: ``shared_fs`` is none (containers need a shared dir for their rootfs).
    """
    if layout.host_mode:
        return Storage(driver="bind", source=host_shared, fstype="bind", mount_point=layout.shared)
    if shared_fs == "virtio-fs":
        return Storage(driver="virtio-fs", source=tag, fstype="virtiofs", mount_point=layout.shared,
                       options=("nodev",))
    if shared_fs == "virtio-9p":
        return Storage(driver="9p", source=tag, fstype="9p", mount_point=layout.shared, options=("nodev",))
    raise SandboxError(f"shared_fs {shared_fs!r}: containers need virtio-fs or virtio-9p to reach the guest")


def kernel_modules(lines: Sequence[str]) -> tuple[KernelModule, ...]:
    """``[agent.kata] kernel_modules`` entries ("name param=value ...") as agent requests."""
    modules = []
    for line in lines:
        name, *parameters = line.split()
        modules.append(KernelModule(name=name, parameters=tuple(parameters)))
    return tuple(modules)


def sandbox_request(sandbox_id: str, *, hostname: str, dns: Sequence[str], storages: Sequence[Storage],
                    modules: Sequence[str]) -> SandboxRequest:
    """CreateSandbox for this sandbox."""
    return SandboxRequest(sandbox_id=sandbox_id, hostname=hostname, dns=tuple(dns), storages=tuple(storages),
                          kernel_modules=kernel_modules([m for m in modules if m.strip()]))


def container_request(container_id: str, spec: Spec) -> ContainerRequest:
    """CreateContainer: the init process's exec id is the container id (as Kata's shim sends)."""
    return ContainerRequest(container_id=container_id, exec_id=container_id, spec=spec)


def exec_request(container_id: str, exec_id: str, process: Process) -> ExecRequest:
    """ExecProcess of ``process`` in a running container."""
    return ExecRequest(container_id=container_id, exec_id=exec_id, process=process)
