"""A real containerd 1.6 for tests: own root, state, sockets and config in a temporary directory (and,
when asked, its CRI plugin with runtime handlers for our shim)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [{disabled}]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""
CRI_PLUGIN = 'plugins."io.containerd.grpc.v1.cri"'
# The CRI plugin without network access: the sandbox (pause) image is one imported beforehand, the streaming
# server takes a free port. CNI (for pods without host networking) finds Debian's plugins and, when the
# test asks for one, its network's conflist; with none, pods use the host network. Root here lacks CAP_SYS_RESOURCE, so
# containers' oom_score_adj may not go below containerd's own (restrict_oom_score_adj). Naming any runtime
# replaces the plugin's table of runtimes: runc (the default handler) is named again.
CRI_CONFIG = """\
[{plugin}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{plugin}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{root}/cni/net.d"
[{plugin}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{plugin}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""
CRI_RUNTIME = """\
[{plugin}.containerd.runtimes.{handler}]
  runtime_type = "{runtime_type}"
[{plugin}.containerd.runtimes.{handler}.options]
  ConfigPath = "{config_path}"
"""
CRI_NAMESPACE = "k8s.io"  # where the CRI plugin keeps its containers and images


@dataclass(frozen=True)
class CriRuntime:
    """A CRI runtime handler: ``runtime_type`` is a shim's name or (containerd 1.6) absolute path;
    ``config_path`` is passed to it as runtimeoptions.v1.Options{config_path} (ConfigPath)."""

    handler: str
    runtime_type: str
    config_path: str = ""


@dataclass(frozen=True)
class CniNetwork:
    """A CNI network for the CRI plugin's pods: Debian's ``bridge`` plugin on a bridge of its own (no
    masquerading: no iptables) with ``host-local`` addresses of ``subnet`` and a default route, plus
    ``loopback``. The plugins never delete the bridge: :func:`run_containerd` does, at the end."""

    name: str = "pykata-cri"
    bridge: str = "pkcri0"
    subnet: str = "10.88.80.0/24"

    def conflist(self, root: Path) -> str:
        """The network's .conflist (IPAM leases kept under ``root``)."""
        bridge = {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                  "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": f"{root}/cni/ipam",
                           "routes": [{"dst": "0.0.0.0/0"}]}}
        return json.dumps({"cniVersion": "1.0.0", "name": self.name, "plugins": [bridge, {"type": "loopback"}]},
                          indent=2)


@dataclass(frozen=True)
class CriOptions:
    """Enable the CRI plugin with these runtime handlers and this (already imported) pause image; pods
    without host networking join ``cni``."""

    sandbox_image: str
    runtimes: tuple[CriRuntime, ...] = ()
    cni: CniNetwork | None = None

    def toml(self, root: Path) -> str:
        """The plugin's section of containerd's config.toml (version 2)."""
        text = CRI_CONFIG.format(plugin=CRI_PLUGIN, sandbox_image=self.sandbox_image, root=root)
        for runtime in self.runtimes:
            text += CRI_RUNTIME.format(plugin=CRI_PLUGIN, handler=runtime.handler, runtime_type=runtime.runtime_type,
                                       config_path=runtime.config_path)
        return text


@dataclass(frozen=True)
class Containerd:
    """A running containerd and how to reach it."""

    root: Path
    address: str
    ttrpc_address: str
    process: subprocess.Popen[bytes]

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <ours> ARGS`` and return its result."""
        return subprocess.run(["ctr", "--address", self.address, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


def _wait_ready(daemon: Containerd, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"containerd exited: {log.read_text()[-2000:]}")
        if os.path.exists(daemon.address) and daemon.ctr("version", timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"containerd not ready in {timeout} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def run_containerd(base: Path, *, cri: CriOptions | None = None, path: str | None = None) -> Iterator[Containerd]:
    """Start containerd under ``base`` (short path: socket paths are limited to 108 bytes); its CRI plugin
    only with ``cri``."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd/ctr not installed (run make setup)")
    disabled = "" if cri else '"io.containerd.grpc.v1.cri"'
    config = CONFIG.format(root=base, disabled=disabled) + (cri.toml(base) if cri else "")
    (base / "config.toml").write_text(config)
    if cri is not None and cri.cni is not None:
        (base / "cni" / "net.d").mkdir(parents=True)
        (base / "cni" / "net.d" / f"10-{cri.cni.name}.conflist").write_text(cri.cni.conflist(base))
    log = base / "containerd.log"
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    with log.open("wb") as out:
        process = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    daemon = Containerd(base, f"{base}/containerd.sock", f"{base}/containerd.sock.ttrpc", process)
    try:
        _wait_ready(daemon, log)
        yield daemon
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if cri is not None and cri.cni is not None:
            subprocess.run(["ip", "link", "del", cri.cni.bridge], check=False, capture_output=True)
