"""kata.hypervisor.process: children watched by pidfd, stderr in a log file, termination, hand-over."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from kata.errors import HypervisorError
from kata.hypervisor.process import spawn


def test_exit_status_and_stderr_tail(tmp_path: Path) -> None:
    async def main() -> None:
        child = await spawn(["sh", "-c", "echo first >&2; echo oops >&2; exit 3"], name="sh",
                            log_path=tmp_path / "sh.log")
        assert await child.wait() == 3
        assert not child.alive() and child.returncode == 3
        assert child.stderr_tail() == "first | oops"

    asyncio.run(main())


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    async def main() -> None:
        child = await spawn(["sh", "-c", "trap '' TERM; echo ready >&2; while :; do sleep 0.05; done"],
                            name="stubborn", log_path=tmp_path / "s.log")
        while "ready" not in child.stderr_tail():
            await asyncio.sleep(0.02)
        assert await child.terminate(grace=0.3) == -signal.SIGKILL

    asyncio.run(main())


def test_a_missing_program_is_a_hypervisor_error(tmp_path: Path) -> None:
    async def main() -> None:
        await spawn([str(tmp_path / "nope")], name="nope", log_path=tmp_path / "n.log")

    with pytest.raises(HypervisorError, match=r"cannot run nope .*No such file"):
        asyncio.run(main())


def test_a_released_child_outlives_the_event_loop(tmp_path: Path) -> None:
    async def main() -> int:
        child = await spawn(["sleep", "30"], name="sleep", log_path=tmp_path / "z.log")
        child.release()
        with pytest.raises(HypervisorError, match="handed over"):
            await child.wait()
        return child.pid

    pid = asyncio.run(main())
    try:
        assert Path(f"/proc/{pid}").exists()
        assert Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
