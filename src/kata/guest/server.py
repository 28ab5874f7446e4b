"""Wire the agent: runtime, storages and services behind a blocking ttRPC server on the channel."""

from __future__ import annotations

from kata.guest.runtime import ContainerRuntime
from kata.guest.services import ContainerService, GuestSandbox, StorageManager, build_router
from kata.guest.services.storage import GUEST_ROOT
from kata.ttrpc.blocking import BlockingServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kata.guest.agent import GuestContext
    from kata.guest.channel import Channel
    from kata.guest.log import GuestLog
    from kata.guest.runtime import ChildWatcher

__all__ = ["SHUTDOWN_GRACE", "build_server", "serve"]

# DestroySandbox's own answer must still reach the host after it asks the server to stop.
SHUTDOWN_GRACE = 2.0


def build_server(log: GuestLog, watcher: ChildWatcher, *, cgroup_root: str | None,
                 allowed_root: str = GUEST_ROOT, wait_modules: Callable[[float], bool] | None = None,
                 init_daemon: bool = True, resolv_conf: str = "/etc/resolv.conf") -> BlockingServer:
    """A BlockingServer serving grpc.AgentService and grpc.Health; it stops after DestroySandbox."""
    runtime = ContainerRuntime(watcher, cgroup_root=cgroup_root, log=log)
    storage = StorageManager(log, allowed_root=allowed_root, wait_modules=wait_modules)
    holder: list[BlockingServer] = []

    def stop() -> None:
        holder[0].shutdown(grace=SHUTDOWN_GRACE, wait=False)

    sandbox = GuestSandbox(log, storage, stop, resolv_conf=resolv_conf, init_daemon=init_daemon)
    sandbox.teardown.append(runtime.close)  # containers go before the storages they live on
    server = BlockingServer(build_router(sandbox, ContainerService(runtime, storage)),
                            report=lambda message: log.error("ttrpc", error=message))
    holder.append(server)
    return server


def serve(channel: Channel, context: GuestContext) -> None:
    """Serve the host on ``channel`` until DestroySandbox; then return (init powers off).

    Raises:
        OSError: when the channel breaks.
    """
    server = build_server(context.log, context.reaper, cgroup_root="/sys/fs/cgroup",
                          wait_modules=context.modules.wait)
    if channel.kind == "serial":
        server.add_stream(channel.fd, reconnectable=True)
    else:
        import socket

        server.add_listener(socket.socket(fileno=channel.fd))
    server.serve_forever()
