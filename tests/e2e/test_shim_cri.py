"""containerd 1.6's CRI plugin with a `kata` runtime handler (our shim): a pod of two containers in one guest,
driven through our small CRI client as the kubelet (or crictl) would."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import CRI_NAMESPACE, CniNetwork, CriOptions, CriRuntime, run_containerd
from tests.cri import CriClient, CriError, cri, cri_client
from tests.images import BUSYBOX_IMAGE, PAUSE_IMAGE, busybox_image, pause_image

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
SHIM = Path(sys.executable).parent / "containerd-shim-kata-v2"
HANDLER = "kata"
GUEST_KERNEL = Path("/var/cache/pykata/guest/kernel.json")
KATA_ROOT = Path(os.environ.get("KATA_ROOT") or "/run/kata")
# The handler's ConfigPath names this configuration: QEMU's memory size (not the default 256 MiB) shows
# the shim loaded it.
POD_MEMORY_MIB = 320


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def our_processes(name: str) -> list[int]:
    """Pids of processes called ``name`` (argv[0] or, for console scripts, argv[1]) that descend from this
    pytest (the suite is a subreaper, so daemonized shims and VMMs stay below it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if name not in {os.path.basename(argv[0]), os.path.basename(argv[1]) if len(argv) > 1 else ""}:
            continue
        pid = int(entry.name)
        while pid > 1 and pid != os.getpid():
            pid = _parent_of(pid)
        if pid == os.getpid():
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def cri_containerd(images: Path, cni: CniNetwork | None = None) -> Iterator[CriClient]:
    """containerd with its CRI plugin (handler `kata` = our shim by absolute path, ConfigPath set; pods
    without host networking on ``cni``), the pause and busybox images (built under ``images``) imported
    into k8s.io; every pod removed at the end."""
    if not SHIM.exists():
        pytest.skip(f"{SHIM} is not installed (pip install -e .)")
    config = images / "configuration.toml"
    config.write_text(f"[hypervisor.qemu]\ndefault_memory = {POD_MEMORY_MIB}\n")
    options = CriOptions(PAUSE_IMAGE, (CriRuntime(HANDLER, str(SHIM), str(config)),), cni)
    with tempfile.TemporaryDirectory(prefix="cri-", dir="/tmp") as base, \
            run_containerd(Path(base), cri=options) as ctd, cri_client(ctd.address) as client:
        try:
            client.version()
        except CriError as exc:
            log = (ctd.root / "containerd.log").read_text()
            failed = [line for line in log.splitlines() if "io.containerd.grpc.v1.cri" in line]
            pytest.fail(f"containerd's CRI plugin is not serving ({exc}): {failed}")
        for image in (busybox_image(images), pause_image(images)):
            imported = ctd.ctr("-n", CRI_NAMESPACE, "images", "import", str(image.archive))
            assert imported.returncode == 0, imported.stderr
            wait_for(functools.partial(_image_known, client, image.name), 30, f"the CRI plugin to see {image.name}")
        try:
            yield client
        finally:
            _remove_pods(client)


@pytest.fixture
def kata_cri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriClient]:
    """The CRI plugin of :func:`cri_containerd`, without a CNI network."""
    with cri_containerd(tmp_path_factory.mktemp("cri-images")) as client:
        yield client


def _image_known(client: CriClient, name: str) -> bool:
    return bool(client.image_status(name).image.id)


def _remove_pods(client: CriClient) -> None:
    """What a failed test left: stop and remove every pod (its containers, shim and VM go with it)."""
    for pod in client.list_pod_sandbox():
        for call in (client.stop_pod_sandbox, client.remove_pod_sandbox):
            try:
                call(pod.id)
            except CriError as exc:
                print(f"cleanup of pod {pod.id}: {exc}")


def pod_config(name: str, logs: Path, *, host_network: bool = True) -> cri.PodSandboxConfig:
    """A pod on the host network (no CNI), or on the CRI plugin's CNI network, as the kubelet would describe it."""
    namespaces = cri.NamespaceOption(network=cri.NODE if host_network else cri.POD)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        log_directory=str(logs),
        labels={"app": name},
        linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
            namespace_options=namespaces)),
    )


def container_config(name: str, *command: str) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=BUSYBOX_IMAGE),
                               command=command, log_path=f"{name}.log", labels={"name": name})


def run_container(client: CriClient, pod_id: str, pod: cri.PodSandboxConfig, name: str, *command: str) -> str:
    container_id = client.create_container(pod_id, container_config(name, *command), pod)
    client.start_container(container_id)
    return container_id


def exec_ok(client: CriClient, container_id: str, *cmd: str) -> str:
    result = client.exec_sync(container_id, *cmd)
    assert result.exit_code == 0, f"{cmd}: exit {result.exit_code}: {result.stderr!r}"
    return result.stdout.decode()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the shim-monitor's)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def monitor_get(sandbox_id: str, path: str) -> tuple[int, str, str]:
    """GET ``path`` on the sandbox's shim-monitor socket: status, Content-Type, body."""
    connection = UnixHTTPConnection(str(KATA_ROOT / sandbox_id / "shim-monitor.sock"))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def metric_value(text: str, sample: str) -> float:
    """The value of the sample line starting with ``sample`` (name and labels) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {sample} in the metrics")


def check_shim_monitor(pod_id: str, vmm: int) -> None:
    """The pod shim's management socket answers /agent-url and /metrics (shim, VMM and guest metrics)."""
    status, _, url = monitor_get(pod_id, "/agent-url")
    state = json.loads((KATA_ROOT / pod_id / "state.json").read_text())
    assert (status, url) == (200, state["vm"]["agent_url"])
    status, content_type, metrics = monitor_get(pod_id, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    assert metric_value(metrics, "kata_shim_tasks") == 3  # the pod's sandbox container and two containers
    assert metric_value(metrics, "process_resident_memory_bytes") > 0  # the shim's own
    vmm_rss = metric_value(metrics, 'kata_hypervisor_proc_status{item="vmrss"}')
    status_kib = next(line for line in Path(f"/proc/{vmm}/status").read_text().splitlines() if line.startswith("VmRSS"))
    assert abs(vmm_rss - int(status_kib.split()[1]) * 1024) < 64 << 20  # the same QEMU, give or take its growth
    assert metric_value(metrics, 'kata_guest_meminfo_bytes{item="MemTotal"}') > 0  # the guest agent's
    assert monitor_get(pod_id, "/nope")[0] == 404


def test_cri_pod_runs_two_containers_in_one_guest(kata_cri: CriClient, tmp_path: Path) -> None:
    client = kata_cri
    assert client.version().runtime_name == "containerd"
    pod = pod_config("pod1", tmp_path)
    started = time.monotonic()
    pod_id = client.run_pod_sandbox(pod, HANDLER)
    ran = time.monotonic() - started
    assert client.pod_sandbox_status(pod_id).state == cri.SANDBOX_READY
    assert (KATA_ROOT / pod_id / "state.json").exists()  # the sandbox container made the VM

    first = run_container(client, pod_id, pod, "first", "sleep", "1000")
    second = run_container(client, pod_id, pod, "second", "sh", "-c", "echo hello from second; sleep 1000")
    assert {c.id for c in client.list_containers(pod_id)} == {first, second}
    assert all(client.container_status(c).state == cri.CONTAINER_RUNNING for c in (first, second))
    assert not (KATA_ROOT / first).exists() and not (KATA_ROOT / second).exists()  # no sandbox of their own
    [vmm] = our_processes("qemu-system-x86_64")
    assert len(our_processes("containerd-shim-kata-v2")) == 1
    vmm_argv = Path(f"/proc/{vmm}/cmdline").read_bytes().decode().split("\0")
    assert vmm_argv[vmm_argv.index("-m") + 1].startswith(f"{POD_MEMORY_MIB}M"), "the handler's ConfigPath was not used"

    kernel = exec_ok(client, first, "uname", "-r").strip()
    assert kernel == json.loads(GUEST_KERNEL.read_text())["release"] != os.uname().release
    assert exec_ok(client, first, "cat", "/proc/sys/kernel/random/boot_id") == \
        exec_ok(client, second, "cat", "/proc/sys/kernel/random/boot_id")  # one guest kernel
    failed = client.exec_sync(second, "sh", "-c", "echo to-stderr >&2; exit 3")
    assert (failed.exit_code, failed.stderr) == (3, b"to-stderr\n")
    wait_for(lambda: "hello from second" in (tmp_path / "second.log").read_text(errors="replace"), 10,
             "the container's log line (CRI log format)")
    check_shim_monitor(pod_id, vmm)
    with pytest.raises(CriError) as timed_out:
        client.exec_sync(first, "sleep", "100", timeout=2)
    assert timed_out.value.code == "DEADLINE_EXCEEDED"  # containerd killed the exec, as with runc
    quitter = run_container(client, pod_id, pod, "quitter", "sh", "-c", "exit 7")
    wait_for(lambda: client.container_status(quitter).state == cri.CONTAINER_EXITED, 30, "quitter to exit")
    assert client.container_status(quitter).exit_code == 7
    client.remove_container(quitter)

    client.stop_container(second, timeout=2)
    assert client.container_status(second).state == cri.CONTAINER_EXITED
    client.remove_container(second)
    assert [c.id for c in client.list_containers(pod_id)] == [first]
    assert exec_ok(client, first, "echo", "pod lives on") == "pod lives on\n"

    client.stop_pod_sandbox(pod_id)
    assert client.pod_sandbox_status(pod_id).state == cri.SANDBOX_NOTREADY
    client.remove_pod_sandbox(pod_id)
    assert client.list_pod_sandbox() == []
    wait_for(lambda: not our_processes("containerd-shim-kata-v2"), 15, "the shim to exit")
    assert not our_processes("qemu-system-x86_64")
    assert not (KATA_ROOT / pod_id).exists()
    print(f"RunPodSandbox (boots the pod's guest): {ran:.2f} s")
