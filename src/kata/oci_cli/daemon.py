"""Start the sandbox daemon (containerd-shim-kata-v2's daemon, serving its Task service on a socket in the
container's directory) and wait for it to go."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

from kata.oci_cli.errors import OciCliError
from kata.oci_cli.layout import ContainerPaths, is_alive, short_path

__all__ = ["NAMESPACE", "spawn_daemon", "wait_gone"]

NAMESPACE = "oci"  # the shim daemon's -namespace (events are kept in memory: no containerd to send them to)
LISTEN_FD = 3  # the shim daemon serves the listening socket it finds on fd 3
SHIM_SCRIPT = "containerd-shim-kata-v2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _daemon_flags(container_id: str, config_path: str | None, debug: bool) -> list[str]:
    flags = ["-namespace", NAMESPACE, "-id", container_id]
    if debug:
        flags.append("-debug")
    if config_path:
        flags += ["-config", os.path.abspath(config_path)]
    return flags


def _daemon_argv(flags: list[str]) -> list[str]:
    script = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), SHIM_SCRIPT)
    entry = [script] if os.path.isfile(script) else ["-m", "kata.shim"]
    return [sys.executable, *entry, *flags]


def _fork_from_server(flags: list[str], env: dict[str, str], paths: ContainerPaths, listener: int, log: int,
                      *, sandbox_root: str, config_path: str | None) -> int:
    """The daemon forked by the fork server (``shim_fork_server``; docs/shim.md); 0: spawn it here.

    Raises:
        OciCliError: the server took the request and its answer was lost.
    """
    from kata.shim.forkserver import ForkRequest, ForkServerError, try_fork_daemon

    request = ForkRequest(argv=tuple(flags), env=env, cwd=str(paths.directory), log_fd=True)
    try:
        return try_fork_daemon(request, listener, root=sandbox_root, config_path=config_path, log_fd=log)
    except ForkServerError as exc:
        raise OciCliError(f"start the sandbox daemon: {exc}") from exc


def _environment(sandbox_root: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTRPC_ADDRESS", "NOTIFY_SOCKET", "LISTEN_FDS")}
    env["KATA_ROOT"] = sandbox_root
    env.setdefault("PATH", DEFAULT_PATH)  # conmon runs us with a reduced environment
    return env


def _inherited_fds(keep: set[int]) -> list[int]:
    """Our descriptors without close-on-exec, other than ``keep`` (engines leak some; the daemon must
    not hold a caller's pipe open for its whole life)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    found.append(fd)
    return found


def spawn_daemon(paths: ContainerPaths, *, sandbox_root: str, config_path: str | None, debug: bool) -> int:
    """Listen on ``paths.socket`` and start the daemon in a new session with that socket as fd 3, stdin
    /dev/null, stdout and stderr appended to ``paths.log``, cwd the container's directory, its sandbox's
    state under ``sandbox_root``; its pid.

    Raises:
        OciCliError: the socket or the process could not be made.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with short_path(str(paths.socket)) as address:
            listener.bind(address)
        os.chmod(paths.socket, 0o600)
        listener.listen(128)
        log = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        listener.close()
        raise OciCliError(f"sandbox daemon socket {paths.socket}: {exc.strerror or exc}") from exc
    moved = os.dup(listener.fileno())  # never 3 itself: dup2(3, 3) would keep close-on-exec
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, log, 1),
        (os.POSIX_SPAWN_DUP2, log, 2), (os.POSIX_SPAWN_DUP2, moved, LISTEN_FD)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds({moved, log, LISTEN_FD})]
    flags = _daemon_flags(paths.container_id, config_path, debug)
    env = _environment(sandbox_root)
    cwd = os.getcwd()
    try:
        if pid := _fork_from_server(flags, env, paths, moved, log, sandbox_root=sandbox_root,
                                    config_path=config_path):
            return pid
        argv = _daemon_argv(flags)
        os.chdir(paths.directory)  # the shim daemon looks for containerd's "log" FIFO in its cwd
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    except OSError as exc:
        raise OciCliError(f"start the sandbox daemon: {exc.strerror or exc}") from exc
    finally:
        os.chdir(cwd)
        for fd in (moved, log):
            os.close(fd)
        listener.close()


def wait_gone(pid: int, start_time: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the process to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our child when `run` both made and removed it
        time.sleep(0.02)
    return True
