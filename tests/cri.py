"""A small CRI (runtime.v1) client for tests, over gRPC on containerd's socket: what crictl would do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import Message

from tests.pb import cri_api_pb2 as cri

__all__ = ["CriClient", "CriError", "cri", "cri_client"]

M = TypeVar("M", bound=Message)
RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"
DEFAULT_TIMEOUT = 180.0  # a pod's first start boots a guest under TCG


class CriError(Exception):
    """A CRI call failed: ``code`` is the gRPC status code's name (NOT_FOUND, UNKNOWN, ...)."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.code = code


class CriClient:
    """Typed calls of the RuntimeService and ImageService RPCs tests/pb/cri_api.proto has."""

    def __init__(self, channel: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._channel = channel
        self.timeout = timeout

    def call(self, service: str, method: str, request: Message, response: type[M], timeout: float | None = None) -> M:
        """One unary call ``/service/method``.

        Raises:
            CriError: the server answered an error status (or the deadline passed).
        """
        stub = self._channel.unary_unary(f"/{service}/{method}", request_serializer=type(request).SerializeToString,
                                         response_deserializer=response.FromString)
        try:
            result: M = stub(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise CriError(method, exc.code().name, exc.details()) from exc
        return result

    def version(self) -> cri.VersionResponse:
        return self.call(RUNTIME, "Version", cri.VersionRequest(version="v1"), cri.VersionResponse, timeout=10)

    def image_status(self, image: str) -> cri.ImageStatusResponse:
        request = cri.ImageStatusRequest(image=cri.ImageSpec(image=image))
        return self.call(IMAGES, "ImageStatus", request, cri.ImageStatusResponse, timeout=10)

    def run_pod_sandbox(self, config: cri.PodSandboxConfig, handler: str) -> str:
        """The new pod's id."""
        request = cri.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return self.call(RUNTIME, "RunPodSandbox", request, cri.RunPodSandboxResponse).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.call(RUNTIME, "StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                  cri.StopPodSandboxResponse)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self.call(RUNTIME, "RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                  cri.RemovePodSandboxResponse)

    def pod_sandbox_status(self, pod_id: str) -> cri.PodSandboxStatus:
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        return self.call(RUNTIME, "PodSandboxStatus", request, cri.PodSandboxStatusResponse).status

    def list_pod_sandbox(self) -> list[cri.PodSandbox]:
        return list(self.call(RUNTIME, "ListPodSandbox", cri.ListPodSandboxRequest(), cri.ListPodSandboxResponse).items)

    def create_container(self, pod_id: str, config: cri.ContainerConfig, pod_config: cri.PodSandboxConfig) -> str:
        """The new container's id."""
        request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
        return self.call(RUNTIME, "CreateContainer", request, cri.CreateContainerResponse).container_id

    def start_container(self, container_id: str) -> None:
        self.call(RUNTIME, "StartContainer", cri.StartContainerRequest(container_id=container_id),
                  cri.StartContainerResponse)

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """SIGTERM (the image's stop signal), SIGKILL after ``timeout`` seconds (at once for 0)."""
        self.call(RUNTIME, "StopContainer", cri.StopContainerRequest(container_id=container_id, timeout=timeout),
                  cri.StopContainerResponse, timeout=self.timeout + timeout)

    def remove_container(self, container_id: str) -> None:
        self.call(RUNTIME, "RemoveContainer", cri.RemoveContainerRequest(container_id=container_id),
                  cri.RemoveContainerResponse)

    def container_status(self, container_id: str) -> cri.ContainerStatus:
        request = cri.ContainerStatusRequest(container_id=container_id)
        return self.call(RUNTIME, "ContainerStatus", request, cri.ContainerStatusResponse).status

    def list_containers(self, pod_id: str = "") -> list[cri.Container]:
        request = cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=pod_id))
        return list(self.call(RUNTIME, "ListContainers", request, cri.ListContainersResponse).containers)

    def exec_sync(self, container_id: str, *cmd: str, timeout: int = 60) -> cri.ExecSyncResponse:
        """Run ``cmd`` in the container; its stdout, stderr and exit code."""
        request = cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        return self.call(RUNTIME, "ExecSync", request, cri.ExecSyncResponse, timeout=timeout + 30)


@contextmanager
def cri_client(socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator[CriClient]:
    """A client on the unix socket ``socket_path`` (containerd's gRPC address), closed on exit."""
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        yield CriClient(channel, timeout)
    finally:
        channel.close()
