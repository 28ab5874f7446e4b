"""The short-lived verbs containerd runs: ``start`` (spawn or reuse the daemon, print its address) and
``delete`` (clean up after a dead daemon, print a DeleteResponse)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time

from kata.errors import KataError
from kata.shim.address import socket_address, socket_path
from kata.shim.main import ShimFlags
from kata.shim.pod import membership, read_annotations

__all__ = ["DELETE_DIAL_TIMEOUT", "KILLED_EXIT_STATUS", "can_connect", "delete", "start", "write_atomically"]

_log = logging.getLogger("kata.shim")
KILLED_EXIT_STATUS = 137  # what a dead shim's task reports: 128 + SIGKILL, as containerd's shims say
DELETE_DIAL_TIMEOUT = 1.0  # containerd gives `delete` 5 s in all; a live agent answers much faster
LISTEN_FD = 3


class ShimStartError(KataError):
    """``start`` could not create the socket or spawn the daemon."""


def can_connect(path: str, timeout: float = 0.1) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (containerd's CanConnect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def write_atomically(path: str, text: str) -> None:
    """Write ``.name`` next to ``path`` and rename it over (containerd's WriteAddress)."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}")
    with open(temporary, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(temporary, path)


def _read_options() -> bytes:
    """containerd writes the runtime options (a serialized Any) to stdin; nothing when there are none."""
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def _listen(path: str) -> socket.socket | None:
    """A socket listening on ``path``; None when a live daemon already serves it."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if can_connect(path):
                sock.close()
                return None
            os.unlink(path)  # a dead daemon's socket
            sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ShimStartError(f"listen on {path}: {exc.strerror}") from exc
    return sock


def _daemon_argv(flags: ShimFlags, config_path: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(sys.argv[0]), "-namespace", flags.namespace, "-id", flags.id,
            "-address", flags.address, "-publish-binary", flags.publish_binary]
    if flags.debug:
        argv.append("-debug")
    if config_path:
        argv += ["-config", config_path]
    return argv


def _spawn_daemon(argv: list[str], listener: socket.socket) -> int:
    """The daemon in a new session, stdio on /dev/null, the listener on fd 3; its pid."""
    fd = listener.fileno()
    moved = os.dup(fd) if fd == LISTEN_FD else fd  # dup2(3, 3) would leave close-on-exec set
    null = os.devnull
    actions = [(os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0), (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, moved, LISTEN_FD)]
    try:
        return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)
    except OSError as exc:
        raise ShimStartError(f"spawn the shim daemon: {exc.strerror}") from exc
    finally:
        if moved != fd:
            os.close(moved)


def fork_server_socket() -> str:
    """Where the fork server listens (``kata.shim.forkserver.server_socket()``, without importing it)."""
    return os.path.join(os.environ.get("KATA_ROOT") or "/run/kata", "fork-server.sock")


def _start_daemon(argv: list[str], listener: socket.socket, config_path: str) -> int:
    """Forked by the fork server when ``shim_fork_server`` is on and one answers (docs/shim.md), else
    spawned; its pid."""
    if not os.path.exists(fork_server_socket()):
        return _spawn_daemon(argv, listener)  # one stat: no server module, no configuration read
    from kata.shim.forkserver import ForkRequest, ForkServerError, try_fork_daemon

    request = ForkRequest(argv=tuple(argv[2:]), env=dict(os.environ), cwd=os.getcwd())
    try:
        pid = try_fork_daemon(request, listener.fileno(), root=None, config_path=config_path)
    except ForkServerError as exc:
        raise ShimStartError(f"start the shim daemon: {exc}") from exc
    return pid or _spawn_daemon(argv, listener)


def start(flags: ShimFlags) -> int:
    """Print the address of the daemon serving this task: a pod's sandbox's, or a new one's.

    containerd reads stdout and stderr together as the address: nothing else may be printed.

    Raises:
        ConfigError: the runtime options name a configuration that does not load.
        RpcError: the runtime options do not decode.
        ShimStartError: the socket or the daemon could not be made.
    """
    bundle = flags.bundle or os.getcwd()
    os.chdir(bundle)
    config_path = ""
    if options := _read_options():
        from kata.shim.options import config_path_from_stdin
        config_path = config_path_from_stdin(options)
    member = membership(flags.id, read_annotations(bundle))
    address = socket_address(flags.address, flags.namespace, member.sandbox_id)
    daemon = 0
    if not member.joins and (listener := _listen(socket_path(address))) is not None:
        with listener:
            daemon = _start_daemon(_daemon_argv(flags, config_path), listener, config_path)
    if options:
        # Checked while the new daemon imports its modules (most of its start-up): a broken
        # configuration fails here, where ctr shows it, and takes the daemon and its socket with it.
        try:
            _check_config(config_path)
        except KataError:
            if daemon:
                _abandon(daemon, socket_path(address))
            raise
    if daemon:
        write_atomically(os.path.join(bundle, "shim.pid"), str(daemon))
    write_atomically(os.path.join(bundle, "address"), address)
    sys.stdout.write(address)
    return 0


def _check_config(config_path: str) -> None:
    from kata.config import load_config

    load_config(config_path or None)


def _abandon(pid: int, socket_file: str) -> None:
    """Kill and reap a daemon spawned for nothing; remove its socket."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        os.unlink(socket_file)


async def _cleanup(sandbox_id: str, container_id: str) -> None:
    from kata.sandbox import AsyncSandbox, SandboxNotFoundError, SandboxState
    # The sandbox goes entirely: no agent is needed (the VM is stopped). A pod's container must be
    # removed in the guest, so that needs the agent (briefly: containerd gives `delete` 5 s).
    owner = container_id == sandbox_id
    try:
        sandbox = await AsyncSandbox.load(sandbox_id, dial_timeout=DELETE_DIAL_TIMEOUT, connect=not owner)
    except SandboxNotFoundError:
        return
    if owner:
        await sandbox.delete()
        return
    with contextlib.suppress(SandboxNotFoundError):
        await sandbox.container(container_id).delete(force=True)
    if sandbox.state in (SandboxState.RUNNING, SandboxState.PAUSED):
        await sandbox.detach()


def _sandbox_left(sandbox_id: str) -> bool:
    """Whether the sandbox still has state on this host (after a clean daemon exit it has none)."""
    from kata.sandbox.paths import SandboxPaths, resolve_root

    return SandboxPaths(resolve_root(), sandbox_id).directory.exists()


def delete(flags: ShimFlags) -> int:
    """After a daemon died: stop its sandbox (or remove the container from its pod's), unmount the
    rootfs, and print a DeleteResponse (exit status 137). A live daemon is left alone: containerd runs
    ``delete`` after every disconnect, also of a healthy pod's later containers, and ``ctr run --rm``
    waits for it: when the daemon left nothing behind, nothing heavier than the response is imported."""
    from kata.log import configure
    from kata.shim.exits import delete_response
    from kata.shim.rootfs import RootfsError, unmount_all

    configure()  # warnings on stderr: containerd logs them as cleanup warnings
    bundle = flags.bundle or os.getcwd()
    member = membership(flags.id, read_annotations(bundle))
    path = socket_path(socket_address(flags.address, flags.namespace, member.sandbox_id))
    if not can_connect(path):
        if _sandbox_left(member.sandbox_id):
            import asyncio

            try:
                asyncio.run(_cleanup(member.sandbox_id, flags.id))
            except KataError as exc:
                _log.error("clean up %s: %s", flags.id, exc)
        if not member.joins:
            with contextlib.suppress(OSError):
                os.unlink(path)
    with contextlib.suppress(RootfsError):
        unmount_all(os.path.join(bundle, "rootfs"))
    response = delete_response(0, KILLED_EXIT_STATUS, time.time())
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.flush()
    return 0
