"""The sandbox daemon's fork server: one process that has imported the daemon once forks each new one.

Protocol (one ``SOCK_SEQPACKET`` connection per daemon, on ``<sandbox root>/fork-server.sock``, 0600):
the client sends one message, a JSON :class:`ForkRequest`, with the daemon's listening socket (and, when
``log_fd``, the file for its stdout and stderr) as ``SCM_RIGHTS``; the server answers one JSON message,
``{"pid": N}`` (the daemon runs) or ``{"error": "..."}`` (nothing was started). Peers of another uid
are refused on both sides (``SO_PEERCRED``).

The daemon is a grandchild of the server (double fork): it is reparented at once, so whoever watches it
by pid (containerd, kata-runtime's ``state``) sees it as a process of its own and the server never
holds a zombie. This module's top level imports only the standard library: ``start`` imports it.

Errors::

    KataError
     └── ForkServerError           the server took the request but its answer was lost (state unknown)
          ├── ForkServerUnavailableError  nothing was started: spawn the daemon yourself
          └── ForkRequestError       (server side) a request that is refused
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from kata.errors import KataError
from kata.log import fields

__all__ = [
    "DAEMON_FLAGS",
    "PRELOAD",
    "SOCKET_NAME",
    "ForkRequest",
    "ForkRequestError",
    "ForkServerError",
    "ForkServerUnavailableError",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "fork_daemon",
    "serve",
    "server_socket",
    "try_fork_daemon",
]

_log = logging.getLogger("kata.shim.forkserver")

SOCKET_NAME = "fork-server.sock"
PROTOCOL = 1
MAX_MESSAGE = 256 * 1024  # a request is argv + environment: a few KiB
MAX_ENV = 4096
LISTEN_FD = 3  # where the daemon finds its listening socket (containerd's convention)
CLIENT_TIMEOUT = 10.0  # a fork takes milliseconds; the server answers one client at a time
REQUEST_TIMEOUT = 2.0  # the server waits this long for a connected client's request
CHILD_TIMEOUT = 5.0  # for the forked daemon to report that its set-up is done
DAEMON_FLAGS = frozenset({"namespace", "id", "address", "publish-binary", "config", "debug"})
# What a daemon imports by the time it has served a sandbox (the debug line "modules imported after the
# fork" of a forked daemon lists what is missing: for a `ctr run` nothing but these is left); each is
# imported once, in the server. The first two are the daemon itself; the rest only save time.
PRELOAD = (
    "kata.shim.main",
    "kata.shim.daemon",
    "kata.shim.service",
    "kata.shim.translate",
    "kata.shim.exits",
    "kata.shim.options",
    "kata.shim.rootfs",
    "kata.shim.stdio",
    "kata.shim.metrics",
    "kata.config",
    "kata.sandbox",
    "kata.sandbox.sandbox",
    "kata.hypervisor.qemu",
    "kata.hypervisor.virtiofsd",
    "kata.hypervisor.process",
    "kata.network",
    "kata.factory.template",
    "kata.factory.ksm",
    "concurrent.futures.thread",
    "shlex",
    "ctypes",
)
REQUIRED = 2  # PRELOAD[:REQUIRED] must import; a failure of another only costs the daemons its time
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ForkServerError(KataError):
    """The fork server took a request but its answer was lost: a daemon may or may not be running."""


class ForkServerUnavailableError(ForkServerError):
    """No fork server answered, or it refused: nothing was started."""


class ForkRequestError(ForkServerError):
    """A request the server refuses (bad flags, environment, directory or descriptors)."""


@dataclass(frozen=True)
class ForkRequest:
    """What a daemon needs of the process that would have spawned it: its flags (``-namespace NS -id
    ID ...``: no program, no verb), environment and directory, and where its stdout and stderr go (the
    second descriptor when ``log_fd``, else /dev/null; stdin is always /dev/null)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    log_fd: bool = False

    @property
    def fd_count(self) -> int:
        """How many descriptors travel with the request: the listening socket, then the log."""
        return 2 if self.log_fd else 1


def server_socket(root: str | None = None) -> str:
    """The server's socket under the sandbox state root (``root``, ``$KATA_ROOT`` or /run/kata)."""
    return os.path.join(root or os.environ.get("KATA_ROOT") or "/run/kata", SOCKET_NAME)


# pure: encoding and validation


def encode_request(request: ForkRequest) -> bytes:
    """The request's wire form (JSON)."""
    return json.dumps({"version": PROTOCOL, "argv": list(request.argv), "env": dict(request.env),
                       "cwd": request.cwd, "log_fd": request.log_fd}).encode()


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and "\0" not in item for item in value):
        raise ForkRequestError(f"{what} must be a list of strings without NUL")
    return value


def _environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise ForkRequestError(f"env must be an object of at most {MAX_ENV} strings")
    for key, item in value.items():
        if not key or "=" in key or "\0" in key or not isinstance(item, str) or "\0" in item:
            raise ForkRequestError(f"bad environment variable {key!r}")
    return value


def check_daemon_flags(argv: Sequence[str]) -> None:
    """Accept only the daemon's own flags (see :data:`DAEMON_FLAGS`), with a namespace and a valid id.

    Raises:
        ForkRequestError: anything else (another flag, a verb, ``-socket``, a bad id).
    """
    from kata.ids import valid_id
    from kata.shim.main import parse_flags

    for arg in argv:
        name = arg.lstrip("-").partition("=")[0]
        if arg.startswith("-") and name not in DAEMON_FLAGS:
            raise ForkRequestError(f"flag not allowed for a forked daemon: {arg}")
    try:
        flags = parse_flags(argv)
    except KataError as exc:
        raise ForkRequestError(f"bad daemon flags: {exc}") from exc
    if flags.action:
        raise ForkRequestError(f"a forked daemon takes no verb ({flags.action})")
    if not flags.namespace or not valid_id(flags.id):
        raise ForkRequestError("a forked daemon needs -namespace and a valid -id")


def decode_request(data: bytes, fd_count: int) -> ForkRequest:
    """Parse and check a request that arrived with ``fd_count`` descriptors.

    Raises:
        ForkRequestError: not JSON, another protocol version, bad fields or flags, a relative
            directory, or the wrong number of descriptors.
    """
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ForkRequestError("request is not JSON") from exc
    if not isinstance(raw, dict) or raw.get("version") != PROTOCOL:
        raise ForkRequestError(f"request is not a version {PROTOCOL} fork request")
    unknown = set(raw) - {"version", "argv", "env", "cwd", "log_fd"}
    if unknown:
        raise ForkRequestError(f"unknown request fields: {', '.join(sorted(unknown))}")
    cwd, log_fd = raw.get("cwd"), raw.get("log_fd", False)
    if not isinstance(cwd, str) or not os.path.isabs(cwd) or "\0" in cwd:
        raise ForkRequestError("cwd must be an absolute path")
    if not isinstance(log_fd, bool):
        raise ForkRequestError("log_fd must be a boolean")
    argv = tuple(_strings(raw.get("argv"), "argv"))
    check_daemon_flags(argv)
    request = ForkRequest(argv=argv, env=_environment(raw.get("env", {})), cwd=cwd, log_fd=log_fd)
    if fd_count != request.fd_count:
        raise ForkRequestError(f"expected {request.fd_count} descriptors, got {fd_count}")
    return request


def encode_reply(*, pid: int = 0, error: str = "") -> bytes:
    """The server's answer: the daemon's pid, or why nothing was started."""
    return json.dumps({"error": error} if error else {"pid": pid}).encode()


def decode_reply(data: bytes) -> int:
    """The daemon's pid from the server's answer.

    Raises:
        ForkServerUnavailableError: the server refused (nothing was started).
        ForkServerError: the answer is empty or garbled.
    """
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ForkServerError("fork server: garbled answer") from exc
    if isinstance(raw, dict) and isinstance(raw.get("error"), str):
        raise ForkServerUnavailableError(f"fork server refused: {raw['error']}")
    if isinstance(raw, dict) and isinstance(raw.get("pid"), int) and raw["pid"] > 0:
        return int(raw["pid"])
    raise ForkServerError("fork server: garbled answer")


def _peer_uid(sock: socket.socket) -> int:
    return int(_CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1])


# client


def fork_daemon(path: str, request: ForkRequest, listener_fd: int, log_fd: int | None = None,
                timeout: float = CLIENT_TIMEOUT) -> int:
    """Ask the server on ``path`` for a daemon serving ``listener_fd``; its pid.

    Raises:
        ForkServerUnavailableError: no server (or one of another uid) answers, or it refused: nothing started.
        ForkServerError: the request went out but no answer came back.
    """
    fds = [listener_fd] if log_fd is None else [listener_fd, log_fd]
    if len(fds) != request.fd_count:
        raise ForkServerUnavailableError("fork request: log_fd and the descriptors disagree")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            if _peer_uid(sock) != os.getuid():
                raise ForkServerUnavailableError(f"fork server {path} runs as another user")
            socket.send_fds(sock, [encode_request(request)], fds)
        except OSError as exc:
            raise ForkServerUnavailableError(f"fork server {path}: {exc.strerror or exc}") from exc
        try:
            answer = sock.recv(4096)
        except OSError as exc:
            raise ForkServerError(f"fork server {path}: no answer: {exc.strerror or exc}") from exc
    return decode_reply(answer)


def _enabled(config_path: str | None) -> bool:
    from kata.config import load_config

    try:
        return load_config(config_path or None).config.runtime.shim_fork_server
    except KataError:
        return False  # the caller reports a broken configuration its own way


def try_fork_daemon(request: ForkRequest, listener_fd: int, *, root: str | None, config_path: str | None,
                    log_fd: int | None = None) -> int:
    """The pid of a daemon forked by the server when ``[runtime] shim_fork_server`` is on and a server
    answers; 0 when the caller must spawn it itself (logged at debug level). Costs one ``stat`` when no
    server socket exists (the configuration is read only when one does).

    Raises:
        ForkServerError: the server took the request but its answer was lost (do not spawn another).
    """
    path = server_socket(root)
    if not os.path.exists(path) or not _enabled(config_path):
        return 0
    try:
        return fork_daemon(path, request, listener_fd, log_fd)
    except ForkServerUnavailableError as exc:
        _log.debug("spawning the daemon: %s", exc)
        return 0


# server


class _StopSignalError(Exception):
    """SIGTERM or SIGINT reached the server."""


def _stop(signum: int, frame: object) -> None:
    raise _StopSignalError


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """No stop signal between a fork and the reaping of its child (the handler raises)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def preload(modules: Sequence[str] = PRELOAD) -> None:
    """Import what the daemon needs, then freeze those objects out of the collector (a forked daemon
    then never writes to their pages: they stay shared with the server).

    Raises:
        ForkServerError: one of the first :data:`REQUIRED` modules does not import, or an import left
            a thread running (forking would copy it half-way).
    """
    import gc
    import importlib
    import threading

    for index, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as exc:
            if index < REQUIRED:
                raise ForkServerError(f"import {name}: {exc}") from exc
            _log.warning("fork server: cannot preload %s: %s", name, exc)
    if threading.active_count() != 1:
        raise ForkServerError(f"preloading started threads: {threading.enumerate()}")
    gc.collect()
    gc.freeze()


def _remove_stale(path: str) -> None:
    """Unlink a dead server's socket at ``path``.

    Raises:
        ForkServerError: a live server answers there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
    raise ForkServerError(f"a fork server already listens on {path}")


def _listen(path: str) -> socket.socket:
    """Bind ``path`` (0600); a stale socket is replaced, a live server's is not.

    Raises:
        ForkServerError: another server answers there, or the socket cannot be made.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ForkServerError(f"fork server socket {path}: {exc.strerror or exc}") from exc
    return sock


def serve(path: str | None = None) -> int:
    """Preload, listen on ``path`` (default :func:`server_socket`) and fork daemons until SIGTERM or
    SIGINT; the socket is removed on the way out. Exit status 0.

    Raises:
        ForkServerError: the socket cannot be made (or another server holds it).
    """
    path = path or server_socket()
    preload()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    listener = _listen(path)
    identity = os.stat(path).st_ino
    _log.info("fork server listening", extra=fields(socket=path, pid=os.getpid()))
    try:
        while True:
            connection, _ = listener.accept()
            with connection:
                _handle(listener, connection)
    except _StopSignalError:
        _log.info("fork server stopping", extra=fields(socket=path))
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == identity:  # still ours, not a successor's
                os.unlink(path)
    return 0


def _receive(connection: socket.socket) -> tuple[bytes, list[int]]:
    """One request and its descriptors (closed again on any error).

    Raises:
        ForkRequestError: a truncated message, or the peer sent nothing in time.
    """
    connection.settimeout(REQUEST_TIMEOUT)
    try:
        data, fds, flags, _ = socket.recv_fds(connection, MAX_MESSAGE, 2)
    except OSError as exc:
        raise ForkRequestError(f"receive the request: {exc.strerror or exc}") from exc
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close(fds)
        raise ForkRequestError("request or its descriptors truncated")
    return data, fds


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _check_fds(fds: Sequence[int]) -> None:
    """The first descriptor must be a listening unix stream socket; a second one must be writable.

    Raises:
        ForkRequestError: when one is not.
    """
    try:
        probe = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise ForkRequestError("the first descriptor is not a socket") from exc
    try:
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if probe.family != socket.AF_UNIX or probe.type != socket.SOCK_STREAM or not listening:
            raise ForkRequestError("the first descriptor is not a listening unix stream socket")
    finally:
        probe.detach()
    if len(fds) > 1 and fcntl.fcntl(fds[1], fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise ForkRequestError("the log descriptor is not writable")


def _handle(listener: socket.socket, connection: socket.socket) -> None:
    """Answer one client: refuse it, or fork its daemon and send the pid."""
    fds: list[int] = []
    try:
        if _peer_uid(connection) != os.getuid():
            raise ForkRequestError("permission denied: peer runs as another user")
        data, fds = _receive(connection)
        if not data and not fds:
            return  # a probe (another server checking the socket is live) hung up
        request = decode_request(data, len(fds))
        _check_fds(fds)
        if not os.path.isdir(request.cwd):
            raise ForkRequestError(f"cwd {request.cwd} is not a directory")
        pid = _fork(request, fds, (listener, connection))
    except (ForkRequestError, OSError) as exc:  # one client's trouble never stops the server
        _log.warning("fork request refused: %s", exc)
        _answer(connection, encode_reply(error=str(exc)))
        return
    finally:
        _close(fds)
    _log.info("forked sandbox daemon", extra=fields(pid=pid, argv=" ".join(request.argv)))
    _answer(connection, encode_reply(pid=pid))


def _answer(connection: socket.socket, reply: bytes) -> None:
    with contextlib.suppress(OSError):
        connection.send(reply)


def _fork(request: ForkRequest, fds: Sequence[int], own: Sequence[socket.socket]) -> int:
    """Double-fork the daemon; its pid once it has set itself up.

    Raises:
        ForkRequestError: a fork failed, or the daemon could not set itself up (it has exited).
    """
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        with _signals_blocked():
            try:
                middle = os.fork()
            except OSError as exc:
                raise ForkRequestError(f"fork: {exc.strerror}") from exc
            if middle == 0:
                _middle(request, fds, own, status_r, status_w)
            os.close(status_w)
            status_w = -1
            os.waitpid(middle, 0)
        return _read_status(status_r)
    finally:
        _close([fd for fd in (status_r, status_w) if fd >= 0])


def _read_status(status_r: int) -> int:
    report = b""
    while select.select([status_r], [], [], CHILD_TIMEOUT)[0]:
        chunk = os.read(status_r, 4096)
        if not chunk:
            break
        report += chunk
    word, _, rest = report.decode(errors="replace").partition(" ")
    if word == "ok" and rest.isdigit():
        return int(rest)
    raise ForkRequestError(rest if word == "error" else "the daemon did not report its start")


def _middle(request: ForkRequest, fds: Sequence[int], own: Sequence[socket.socket], status_r: int,
            status_w: int) -> None:
    """The first child: fork the daemon and exit, so the daemon is reparented and the server reaps us."""
    code = 0
    try:
        os.close(status_r)
        if os.fork() == 0:
            _become_daemon(request, fds, own, status_w)
    except BaseException as exc:  # a forked child must never return into the server's loop
        with contextlib.suppress(BaseException):
            os.write(status_w, f"error fork the daemon: {exc}".encode())
        code = 1
    os._exit(code)


def _become_daemon(request: ForkRequest, fds: Sequence[int], own: Sequence[socket.socket],
                   status_w: int) -> None:
    """In the daemon: what ``posix_spawn`` with ``setsid`` and the file actions did, then the daemon's
    main, then exit (never returning into the server's code)."""
    try:
        for sock in own:
            sock.detach()  # their fds are closed below; the objects must not close a reused number later
        _reset_signals()
        os.setsid()
        os.chdir(request.cwd)
        _arrange_fds(fds, request.log_fd, status_w)
        os.environ.clear()
        os.environ.update(request.env)
        sys.argv = ["containerd-shim-kata-v2", *request.argv]
        _name_process(b"kata-shim")
        import random

        random.seed()  # (random also reseeds itself at fork; uuid and secrets read os.urandom)
        os.write(status_w, f"ok {os.getpid()}".encode())
        os.close(status_w)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(status_w, f"error set up the daemon: {exc}".encode())
        os._exit(1)
    os._exit(_run_daemon(request.argv))


def _reset_signals() -> None:
    """A fresh interpreter's dispositions, no wakeup fd, nothing blocked."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _arrange_fds(fds: Sequence[int], log_fd: bool, keep: int) -> None:
    """stdin /dev/null, stdout and stderr the log or /dev/null, the listener on fd 3, nothing else
    (but ``keep``) open."""
    listener = fds[0]
    # Move what we keep above the stdio and fd 3 first: the numbers may collide.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (listener, *fds[1:])]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(high[1] if log_fd else null, 1)
    os.dup2(high[1] if log_fd else null, 2)
    os.dup2(high[0], LISTEN_FD)  # dup2 clears close-on-exec, as the spawn's file action did
    keep_open = {0, 1, 2, LISTEN_FD, keep}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep_open:
            with contextlib.suppress(OSError):
                os.close(fd)


def _name_process(name: bytes) -> None:
    """``comm`` (what ``ps -o comm``, ``top`` and ``pgrep`` without ``-f`` show); the command line stays
    the server's: changing it needs CAP_SYS_RESOURCE."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME


def _run_daemon(argv: Sequence[str]) -> int:
    """The daemon's main, as ``containerd-shim-kata-v2 ARGV`` would run it; its exit status."""
    import atexit

    from kata.shim.main import main

    preloaded = set(sys.modules)
    code = 1
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        _log.exception("forked sandbox daemon failed")
    late = sorted(set(sys.modules) - preloaded)
    _log.debug("modules imported after the fork: %d %s", len(late), " ".join(late))
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()  # what a normal interpreter exit runs (logging's flush among them)
        sys.stdout.flush()
        sys.stderr.flush()
    return code

