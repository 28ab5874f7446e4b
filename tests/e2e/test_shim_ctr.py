"""containerd-shim-kata-v2 driven by a real containerd 1.6 through ctr: every task in its own QEMU guest."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kata.shim.address import socket_address
from tests.containerd import Containerd
from tests.images import BUSYBOX_IMAGE

pytestmark = pytest.mark.e2e
KATA = "io.containerd.kata.v2"
GUEST_KERNEL = Path("/var/cache/pykata/guest/kernel.json")
RUN_TIMEOUT = 120


def ctr_run(ctd: Containerd, *args: str) -> subprocess.CompletedProcess[str]:
    """``ctr run --rm --runtime io.containerd.kata.v2 ARGS`` (stdin: ctr 1.6 never ends a task's stdin,
    not even with runc, so a task reading it would hang)."""
    return subprocess.run(["ctr", "--address", ctd.address, "run", "--rm", "--runtime", KATA, *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: rc {result.returncode}: {result.stderr}"
    return result.stdout


def task_status(ctd: Containerd, task: str) -> str | None:
    for line in ok(ctd.ctr("task", "ls")).splitlines()[1:]:
        name, _, status = line.split()[:3]
        if name == task:
            return status
    return None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Events:
    """``ctr events`` running in the background; ``task_events()`` parses what it printed so far."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.seen = b""

    def _drain(self) -> None:
        assert self.process.stdout is not None
        while select.select([self.process.stdout], [], [], 0.1)[0]:
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                return
            self.seen += chunk

    def task_events(self, container: str) -> list[tuple[str, dict[str, object]]]:
        """(topic, payload) of every /tasks/ event about ``container``, in order."""
        self._drain()
        found = []
        for line in self.seen.decode(errors="replace").splitlines():
            parts = line.split(maxsplit=6)  # date time zone UTC namespace topic json
            if len(parts) == 7 and parts[5].startswith("/tasks/"):
                payload = json.loads(parts[6])
                if payload.get("container_id") == container:
                    found.append((parts[5], payload))
        return found

    def topics(self, container: str) -> list[str]:
        return [topic for topic, _ in self.task_events(container)]


@contextmanager
def ctr_events(ctd: Containerd) -> Iterator[Events]:
    process = subprocess.Popen(["ctr", "--address", ctd.address, "events"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        time.sleep(0.3)  # let ctr subscribe
        yield Events(process)
    finally:
        process.kill()
        process.wait()


def bundle_dir(ctd: Containerd, task: str) -> Path:
    return ctd.root / "state" / "io.containerd.runtime.v2.task" / "default" / task


def test_socket_address_matches_containerds(kata_containerd: Containerd) -> None:
    """The address our shim computes is the one runc's shim (containerd's own code) listens on."""
    ctd = kata_containerd
    ok(ctd.ctr("run", "-d", BUSYBOX_IMAGE, "runc-ref", "sleep", "100"))
    try:
        expected = socket_address(ctd.address, "default", "runc-ref")
        assert (bundle_dir(ctd, "runc-ref") / "address").read_text() == expected
    finally:
        ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "runc-ref"))
        wait_for(lambda: task_status(ctd, "runc-ref") == "STOPPED", 10, "runc task to stop")
        ok(ctd.ctr("task", "delete", "runc-ref"))
        ok(ctd.ctr("container", "rm", "runc-ref"))


def test_run_prints_the_guest_kernel_and_passes_exit_codes(kata_containerd: Containerd) -> None:
    ctd = kata_containerd
    started = time.monotonic()
    kernel = ok(ctr_run(ctd, BUSYBOX_IMAGE, "k1", "uname", "-r")).strip()
    first = time.monotonic() - started
    assert kernel == json.loads(GUEST_KERNEL.read_text())["release"]
    assert kernel != os.uname().release
    assert ctr_run(ctd, BUSYBOX_IMAGE, "k2", "sh", "-c", "echo out; echo err >&2; exit 3").returncode == 3
    assert ok(ctd.ctr("task", "ls")).splitlines()[1:] == []
    assert ok(ctd.ctr("container", "ls", "-q")).split() == []
    print(f"ctr run --rm uname -r: {first:.2f} s")


def test_exec_ps_pause_resume_metrics_kill_and_events_in_order(kata_containerd: Containerd) -> None:
    ctd = kata_containerd
    with ctr_events(ctd) as events:
        ok(ctd.ctr("run", "-d", "--runtime", KATA, BUSYBOX_IMAGE, "c1", "sleep", "1000", timeout=RUN_TIMEOUT))
        assert task_status(ctd, "c1") == "RUNNING"
        execd = ctd.ctr("task", "exec", "--exec-id", "e1", "c1", "sh", "-c", "echo from-exec; exit 5")
        assert (execd.returncode, execd.stdout) == (5, "from-exec\n"), execd.stderr
        ps = ok(ctd.ctr("task", "ps", "c1")).splitlines()
        assert len(ps) == 2 and int(ps[1].split()[0]) > 0  # the VMM's pid, as Kata reports
        ok(ctd.ctr("task", "pause", "c1"))
        assert task_status(ctd, "c1") == "PAUSED"
        ok(ctd.ctr("task", "resume", "c1"))
        assert task_status(ctd, "c1") == "RUNNING"
        metrics = ok(ctd.ctr("task", "metrics", "c1"))
        assert "memory.usage_in_bytes" in metrics and "pids.current" in metrics, metrics
        as_json = json.loads(ok(ctd.ctr("task", "metrics", "--format", "json", "c1")))
        assert as_json["pids"]["current"] >= 1
        ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "c1"))
        wait_for(lambda: task_status(ctd, "c1") == "STOPPED", 30, "c1 to stop")
        ok(ctd.ctr("task", "delete", "c1"))
        ok(ctd.ctr("container", "rm", "c1"))
        wait_for(lambda: "/tasks/delete" in events.topics("c1"), 10, "the delete event")
        seen = events.task_events("c1")
    topics = [topic for topic, _ in seen]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit",
                      "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"], topics
    exec_exit, init_exit = seen[4][1], seen[7][1]
    assert (exec_exit["id"], exec_exit["exit_status"]) == ("e1", 5)
    assert (init_exit["id"], init_exit["exit_status"]) == ("c1", 137)


def test_killed_shim_is_cleaned_up_by_delete(kata_containerd: Containerd) -> None:
    ctd = kata_containerd
    with ctr_events(ctd) as events:
        ok(ctd.ctr("run", "-d", "--runtime", KATA, BUSYBOX_IMAGE, "s1", "sleep", "1000", timeout=RUN_TIMEOUT))
        shim = int((bundle_dir(ctd, "s1") / "shim.pid").read_text())
        assert Path("/run/kata/s1").exists()
        os.kill(shim, signal.SIGKILL)
        wait_for(lambda: "/tasks/exit" in events.topics("s1"), 30, "containerd's exit event")
        exit_event = dict(events.task_events("s1"))["/tasks/exit"]
    assert exit_event["exit_status"] == 137
    assert task_status(ctd, "s1") is None  # containerd dropped the dead task
    ok(ctd.ctr("container", "rm", "s1"))
    assert not Path("/run/kata/s1").exists()


def test_killed_vm_reports_exit_and_task_delete_cleans_up(kata_containerd: Containerd) -> None:
    ctd = kata_containerd
    ok(ctd.ctr("run", "-d", "--runtime", KATA, BUSYBOX_IMAGE, "q1", "sleep", "1000", timeout=RUN_TIMEOUT))
    vmm = int(ok(ctd.ctr("task", "ps", "q1")).splitlines()[1].split()[0])
    assert "qemu" in Path(f"/proc/{vmm}/cmdline").read_bytes().decode(errors="replace")
    os.kill(vmm, signal.SIGKILL)
    wait_for(lambda: task_status(ctd, "q1") == "STOPPED", 30, "q1 to be reported stopped")
    deleted = ctd.ctr("task", "delete", "q1")
    assert deleted.returncode == 0 and "255" in deleted.stderr, deleted.stderr
    ok(ctd.ctr("container", "rm", "q1"))
    assert not Path("/run/kata/q1").exists()


def test_bad_runtime_config_path_fails_the_run(kata_containerd: Containerd) -> None:
    result = ctr_run(kata_containerd, "--runtime-config-path", "/nonexistent/pykata.toml", BUSYBOX_IMAGE, "b1",
                     "true")
    assert result.returncode != 0
    assert "/nonexistent/pykata.toml" in result.stderr
    ok(kata_containerd.ctr("container", "rm", "b1")) if "b1" in kata_containerd.ctr("c", "ls", "-q").stdout else None


def test_terminal_and_file_log_uri(kata_containerd: Containerd, tmp_path: Path) -> None:
    ctd = kata_containerd
    master, slave = pty.openpty()
    ctr = subprocess.Popen(["ctr", "--address", ctd.address, "run", "--rm", "-t", "--runtime", KATA, BUSYBOX_IMAGE,
                            "t1", "sh", "-c", "tty; echo on-the-terminal; exit 7"],
                           stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output = b""
    try:
        while select.select([master], [], [], RUN_TIMEOUT)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    assert ctr.wait(30) == 7
    assert b"on-the-terminal\r\r\n" in output  # onlcr twice: the guest's pty, then ours
    log = tmp_path / "task.log"
    ok(ctr_run(ctd, "--log-uri", f"file://{log}", BUSYBOX_IMAGE, "l1", "sh", "-c", "echo logged; echo err >&2"))
    assert sorted(log.read_text().splitlines()) == ["err", "logged"]


def boot_id(ctd: Containerd, task: str) -> str:
    exec_id = f"boot-{time.monotonic_ns()}"  # the sandbox library does not free an exec id after delete yet
    return ok(ctd.ctr("task", "exec", "--exec-id", exec_id, task, "cat", "/proc/sys/kernel/random/boot_id")).strip()


def test_cri_annotated_containers_share_the_pods_vm(kata_containerd: Containerd) -> None:
    """What the CRI plugin does, with ctr: the pod's sandbox container makes the VM, the next joins it."""
    ctd = kata_containerd
    cri = "io.kubernetes.cri"
    pod = ["--annotation", f"{cri}.container-type=sandbox", "--annotation", f"{cri}.sandbox-id=pod1"]
    member = ["--annotation", f"{cri}.container-type=container", "--annotation", f"{cri}.sandbox-id=pod1"]
    ok(ctd.ctr("run", "-d", "--runtime", KATA, *pod, BUSYBOX_IMAGE, "pod1", "sleep", "1000", timeout=RUN_TIMEOUT))
    ok(ctd.ctr("run", "-d", "--runtime", KATA, *member, BUSYBOX_IMAGE, "app1", "sleep", "1000", timeout=RUN_TIMEOUT))
    assert (bundle_dir(ctd, "app1") / "address").read_text() == (bundle_dir(ctd, "pod1") / "address").read_text()
    assert not (bundle_dir(ctd, "app1") / "shim.pid").exists()  # no daemon of its own
    assert boot_id(ctd, "pod1") == boot_id(ctd, "app1")  # one guest kernel
    assert Path("/run/kata/pod1").exists() and not Path("/run/kata/app1").exists()
    ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "app1"))
    wait_for(lambda: task_status(ctd, "app1") == "STOPPED", 30, "app1 to stop")
    ok(ctd.ctr("task", "delete", "app1"))
    ok(ctd.ctr("container", "rm", "app1"))
    assert task_status(ctd, "pod1") == "RUNNING"  # `delete` after app1's disconnect left the live pod alone
    assert len(boot_id(ctd, "pod1")) == 36
    ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "pod1"))
    wait_for(lambda: task_status(ctd, "pod1") == "STOPPED", 30, "pod1 to stop")
    ok(ctd.ctr("task", "delete", "pod1"))
    ok(ctd.ctr("container", "rm", "pod1"))
    assert not Path("/run/kata/pod1").exists()


def test_a_container_over_its_memory_limit_gets_oom_killed_and_containerd_hears_of_it(
        kata_containerd: Containerd) -> None:
    """The guest's memory cgroup kills the hog; the agent's OOM event becomes containerd's TaskOOM."""
    ctd = kata_containerd
    with ctr_events(ctd) as events:
        hog = "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"
        run = ctd.ctr("run", "--rm", "--memory-limit", str(32 << 20), "--runtime", KATA, BUSYBOX_IMAGE, "oom1",
                      "sh", "-c", hog, timeout=RUN_TIMEOUT)
        assert run.returncode == 137 and "survived" not in run.stdout, (run.returncode, run.stdout, run.stderr)
        wait_for(lambda: "/tasks/oom" in events.topics("oom1"), 15, "the OOM event")
        topics = events.topics("oom1")
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics
