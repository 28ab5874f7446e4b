"""The one place VMM and helper processes are spawned: supervised children with bounded termination.

A child runs in its own session with stdin/stdout on /dev/null and stderr appended to a log file, and is
watched through a pidfd rather than an asyncio child transport: nothing ties its life to ours, so a
sandbox's VM can be handed to another process (:meth:`ChildProcess.release`) and outlive this one. An
asyncio transport would kill the child when its event loop closes, and a stderr pipe would break when
the reading process went away. The process that takes such a VM over watches it with
:func:`adopt` (a pidfd works on any process, not only on a child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from kata.errors import HypervisorError
from kata.log import fields

__all__ = ["ChildProcess", "adopt", "proc_stat", "spawn"]

_log = logging.getLogger("kata.hypervisor.process")
_TAIL_LINES = 20
_TAIL_BYTES = 8192


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``pid``'s state letter and start time (clock ticks since boot) from /proc, or None when there is
    no such process. The start time tells a process from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    values = text.rpartition(")")[2].split()
    return values[0], int(values[19])  # state (field 3), starttime (field 22)


class ChildProcess:
    """A supervised process: its pid, exit status, the tail of its stderr log, and escalating termination.

    Made by :func:`spawn` (our child) or :func:`adopt` (another process's child: its exit status is not
    ours to read and is reported as 0).
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes] | None, log_path: Path, sandbox_id: str, *,
                 pid: int = 0, pidfd: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._popen = popen
        self._pid = popen.pid if popen is not None else pid
        self._returncode: int | None = None
        self._released = False
        self._sandbox_id = sandbox_id
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._last_words = ""  # the stderr tail as it was at exit: the log file may be gone by the time it is read
        # A pidfd works on a zombie too, so the exit is never missed.
        self._pidfd: int | None = pidfd if pidfd is not None else os.pidfd_open(self._pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    @property
    def pid(self) -> int:
        """The process's pid."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it ended (negative: killed by that signal; 0 for an adopted one), else None."""
        return self._returncode

    def alive(self) -> bool:
        """Whether the process has not ended yet (a released child counts as alive while it runs)."""
        return self._returncode is None

    def stderr_tail(self) -> str:
        """The last lines the child wrote to stderr."""
        return self._last_words if self._exited.done() else self._read_tail()

    def _read_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - _TAIL_BYTES))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = deque((line.rstrip() for line in text.splitlines() if line.strip()), maxlen=_TAIL_LINES)
        return " | ".join(lines)

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _on_exit(self) -> None:
        self._unwatch()
        # The pidfd is readable: the process has exited, so reaping our child does not block.
        code = self._popen.wait() if self._popen is not None else 0
        self._returncode = code
        self._last_words = self._read_tail()
        if not self._exited.done():
            self._exited.set_result(code)
        _log.debug("%s exited", self.name, extra=fields(sandbox=self._sandbox_id, pid=self.pid, status=code))

    async def wait(self) -> int:
        """Wait for the child to end; its exit status.

        Raises:
            HypervisorError: the child was released (another process owns it now).
        """
        if self._released and not self._exited.done():
            raise HypervisorError(f"{self.name} (pid {self.pid}) was handed over: it cannot be waited for here")
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        """Signal the process (nothing if it is already gone or was released)."""
        if self._pidfd is not None and not self._released and self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    async def terminate(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s; the exit status. Never raises for a gone child.

        Raises:
            HypervisorError: the child was released.
        """
        if self.alive():
            self.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), grace)
            except TimeoutError:
                _log.warning("%s ignored SIGTERM for %g s: killing it", self.name, grace,
                             extra=fields(sandbox=self._sandbox_id, pid=self.pid))
                self.send_signal(signal.SIGKILL)
        return await self.wait()

    def release(self) -> None:
        """Hand the process over: it runs on after this process exits and is never signalled or waited
        for through this object again (its new owner goes by pid and pidfd). A child of ours is still
        reaped here when it ends, so a long-lived parent (the VM cache) collects no zombies."""
        self._released = True


async def spawn(argv: Sequence[str], *, name: str, log_path: Path, pass_fds: Sequence[int] = (),
                sandbox_id: str = "", env_defaults: Mapping[str, str] | None = None) -> ChildProcess:
    """Start ``argv`` in its own session: stdin/stdout /dev/null, stderr appended to ``log_path``,
    ``pass_fds`` inherited, our environment plus those ``env_defaults`` it does not set.

    Raises:
        HypervisorError: the log file cannot be opened or the program cannot be executed.
    """
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise HypervisorError(f"cannot open {name}'s log {log_path}: {exc.strerror}") from exc
    try:
        env = {**env_defaults, **os.environ} if env_defaults else None
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                 pass_fds=tuple(pass_fds), start_new_session=True, env=env)
    except OSError as exc:
        raise HypervisorError(f"cannot run {name} ({argv[0]}): {os.strerror(exc.errno or 0)}") from exc
    finally:
        os.close(log)
    _log.info("started %s", name, extra=fields(sandbox=sandbox_id, pid=popen.pid, argv=" ".join(argv)))
    return ChildProcess(name, popen, log_path, sandbox_id)


def adopt(pid: int, start_time: int, *, name: str, log_path: Path, sandbox_id: str = "") -> ChildProcess:
    """Supervise ``pid``, a process another one started (a VM handed over), if it is still the process
    that started at ``start_time`` (clock ticks since boot, as /proc says).

    Raises:
        HypervisorError: there is no such process any more (or the pid now names another one).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        raise HypervisorError(f"adopt {name} (pid {pid}): {os.strerror(exc.errno or 0)}") from exc
    found = proc_stat(pid)  # checked after the pidfd is open: the pidfd cannot move to another process
    if found is None or found[0] == "Z" or found[1] != start_time:
        os.close(pidfd)
        raise HypervisorError(f"adopt {name} (pid {pid}): the process is gone")
    return ChildProcess(name, None, log_path, sandbox_id, pid=pid, pidfd=pidfd)
