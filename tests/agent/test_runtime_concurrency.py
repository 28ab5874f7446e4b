"""Many containers at once from worker threads, and the guest's Reaper as the child watcher."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from kata.guest.runtime import ContainerRuntime
from tests.agent.support import exec_process, make_spec, run, run_exec


def test_parallel_containers_each_see_their_own_eof(runtime: ContainerRuntime, rootfs: Path) -> None:
    """Children forked for one container must not hold another's pipes (EOF would never come)."""
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            results[index] = run(runtime, make_spec(rootfs, "sh", "-c", f"sleep 0.1; echo {index}"),
                                 f"c{index}").stdout
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == {index: f"{index}\n" for index in range(8)}


def test_parallel_execs(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    runtime.start_container("c1")
    outputs: dict[int, str] = {}

    def one(index: int) -> None:
        outputs[index] = run_exec(runtime, "c1", f"e{index}", exec_process("echo", str(index))).stdout

    threads = [threading.Thread(target=one, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outputs == {index: f"{index}\n" for index in range(6)}


REAPER_SCRIPT = """
import os, signal, sys, threading
from dataclasses import replace
sys.path[:0] = [{src!r}, {repo!r}]
from kata.guest.log import GuestLog
from kata.guest.reaper import Reaper
from kata.guest.runtime import ContainerRuntime
from tests.agent.support import drain, exec_process, make_spec

reaper = Reaper()
reaper.install()  # SIGCHLD -> waitpid(-1) in the main thread, as PID 1 does in the guest
runtime = ContainerRuntime(reaper, cgroup_root=None, log=GuestLog(level="warning"))
spec = make_spec({rootfs!r}, "sh", "-c", "echo init; exit 3")
runtime.create_container("c1", spec)
runtime.start_container("c1")
print(drain(runtime.read_stdout, "c1", "").decode().strip(), runtime.wait_process("c1", "", timeout=10))
runtime.remove_container("c1")
runtime.create_container("c2", make_spec({rootfs!r}, "sleep", "60"))
runtime.start_container("c2")
result = []
def parent(pid):
    return int(open(f"/proc/{{pid}}/stat").read().rpartition(")")[2].split()[1])
def worker():  # RPC handlers run in threads; the main thread only sleeps
    runtime.exec_process("c2", "e1", exec_process("sh", "-c", "echo exec; exit 4"))
    result.append((drain(runtime.read_stdout, "c2", "e1").decode().strip(), runtime.wait_process("c2", "e1")))
    runtime.exec_process("c2", "e2", exec_process("sleep", "60"))
    pids = (runtime.container_info("c2").pid, runtime.process_info("c2", "e2").pid)
    result.append(("adopted", all(parent(pid) == os.getpid() for pid in pids)))
    runtime.signal_process("c2", "e2", signal.SIGKILL)
    result.append(("killed", runtime.wait_process("c2", "e2", timeout=10)))
thread = threading.Thread(target=worker)
thread.start()
while thread.is_alive():
    thread.join(0.01)
for line in result:
    print(*line)
runtime.close()
"""


def test_the_guest_reaper_as_watcher(rootfs: Path) -> None:
    """The runtime's children reset the Reaper's SIGCHLD handler, so their own children stay theirs.

    With the Reaper (PID 1 in the guest, a subreaper here) the monitors leave once they forked: the
    container's processes are the agent's own children, and their statuses still arrive.
    """
    repo = Path(__file__).resolve().parents[2]
    script = REAPER_SCRIPT.format(src=str(repo / "src"), repo=str(repo), rootfs=str(rootfs))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "init 3\nexec 4\nadopted True\nkilled 137\n", "")
