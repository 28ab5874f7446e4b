"""Wire the agent: runtime, storages and services behind a blocking ttRPC server on the channel.

In the guest (:func:`serve`) only grpc.Health is imported before the channel is served; the runtime,
the services and their protos load in the background (kata.guest.loading). Host mode and tests build
the whole server at once (:func:`build_server`).
"""

from __future__ import annotations

import gc
import time

from kata.ttrpc.blocking import BlockingServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kata.guest.agent import GuestContext
    from kata.guest.channel import Channel
    from kata.guest.log import GuestLog
    from kata.guest.runtime import ChildWatcher
    from kata.guest.services.storage import WaitModules
    from kata.ttrpc.dispatch import Router

__all__ = ["SHUTDOWN_GRACE", "build_agent_router", "build_server", "serve"]

# DestroySandbox's own answer must still reach the host after it asks the server to stop.
SHUTDOWN_GRACE = 2.0


def build_agent_router(log: GuestLog, watcher: ChildWatcher, stop: Callable[[], None], *,
                       cgroup_root: str | None, allowed_root: str | None = None,
                       wait_modules: WaitModules | None = None, init_daemon: bool = True,
                       resolv_conf: str = "/etc/resolv.conf") -> Router:
    """grpc.AgentService and grpc.Health over a new runtime; ``stop`` ends serving (DestroySandbox).

    ``allowed_root`` (default /run/kata-containers) is where storages may be mounted.
    """
    from kata.guest.runtime import ContainerRuntime
    from kata.guest.services import ContainerService, GuestSandbox, StorageManager, build_router
    from kata.guest.services.storage import GUEST_ROOT

    runtime = ContainerRuntime(watcher, cgroup_root=cgroup_root, log=log)
    storage = StorageManager(log, allowed_root=allowed_root or GUEST_ROOT, wait_modules=wait_modules)
    sandbox = GuestSandbox(log, storage, stop, resolv_conf=resolv_conf, init_daemon=init_daemon)
    sandbox.teardown.append(runtime.close)  # containers go before the storages they live on
    return build_router(sandbox, ContainerService(runtime, storage))


def build_server(log: GuestLog, watcher: ChildWatcher, *, cgroup_root: str | None,
                 allowed_root: str | None = None, wait_modules: WaitModules | None = None,
                 init_daemon: bool = True, resolv_conf: str = "/etc/resolv.conf") -> BlockingServer:
    """A BlockingServer serving grpc.AgentService and grpc.Health; it stops after DestroySandbox."""
    holder: list[BlockingServer] = []

    def stop() -> None:
        holder[0].shutdown(grace=SHUTDOWN_GRACE, wait=False)

    router = build_agent_router(log, watcher, stop, cgroup_root=cgroup_root, allowed_root=allowed_root,
                                wait_modules=wait_modules, init_daemon=init_daemon, resolv_conf=resolv_conf)
    server = BlockingServer(router, report=lambda message: log.error("ttrpc", error=message))
    holder.append(server)
    return server


def serve(channel: Channel, context: GuestContext) -> None:
    """Serve the host on ``channel`` until DestroySandbox; then return (init powers off).

    grpc.Health answers at once; the rest of the agent is imported in the background meanwhile.

    Raises:
        OSError: when the channel breaks.
    """
    from kata.guest import codecache
    from kata.guest.loading import DeferredRouter
    from kata.guest.services import HEALTH_SERVICE
    from kata.guest.services.health import health_methods

    log = context.log
    router = DeferredRouter(log)
    router.register(HEALTH_SERVICE, health_methods())
    server = BlockingServer(router, report=lambda message: log.error("ttrpc", error=message))

    def stop() -> None:
        server.shutdown(grace=SHUTDOWN_GRACE, wait=False)

    def load() -> Router:
        codecache.install(("dataclasses",))  # before the first dataclass is defined
        router = build_agent_router(log, context.reaper, stop, cgroup_root="/sys/fs/cgroup",
                                    wait_modules=context.modules.wait)
        # What is loaded now lives as long as the agent: keep the collector off it, so that it never
        # writes to those pages (which every container process forked from PID 1 would then copy).
        gc.freeze()
        return router

    router.load(load)
    if channel.kind == "serial":
        server.add_stream(channel.fd, reconnectable=True)
    else:
        import socket

        server.add_listener(socket.socket(fileno=channel.fd))
    log.info("agent serving", channel=channel.address, uptime=round(time.monotonic(), 3))
    server.serve_forever()
