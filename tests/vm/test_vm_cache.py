"""The VM cache (TCG): a server keeps VMs booted; sandboxes take them over, the server boots the next.

The server runs as `kata-runtime factory init` in its own process (as a user runs it), with the
sandboxes in this one: what a container sees, which VM it ran in, and that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w

from kata.config import Config
from kata.factory.cache import VmCacheClient
from kata.sandbox import OutputBuffer, Sandbox
from tests.agent.sandbox_support import make_bundle
from tests.vm.test_sandbox import alive, config_for

pytestmark = pytest.mark.vm

READY_TIMEOUT = 120.0
KATA_RUNTIME = str(Path(sys.executable).parent / "kata-runtime")


def cache_config(shared_fs: str, tmp_path: Path, *, template: bool = False) -> Config:
    config = config_for(shared_fs)
    factory = replace(config.factory, vm_cache_number=1, vm_cache_endpoint=str(tmp_path / "cache.sock"),
                      enable_template=template, template_path=str(tmp_path / "template"))
    return replace(config, factory=factory)


def status(config: Config) -> dict[str, int]:
    answer = asyncio.run(VmCacheClient(config.factory.vm_cache_endpoint).status())
    return {"ready": answer.ready, "booting": answer.booting, "served": answer.served, "failed": answer.failed}


def wait_ready(config: Config, server: subprocess.Popen[str], count: int = 1) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, f"cache server exited: {server.communicate()}"
        if Path(config.factory.vm_cache_endpoint).exists():
            try:
                if status(config)["ready"] >= count:
                    return
            except Exception:  # not serving yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"no cached VM ready within {READY_TIMEOUT} s")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary dir: the cached VMs' sockets live below it (unix socket paths: at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vmc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve() -> Iterator[list[subprocess.Popen[str]]]:
    """Start `kata-runtime factory init` on a config; stopped (SIGTERM) and checked gone afterwards."""
    servers: list[subprocess.Popen[str]] = []
    yield servers
    for server in servers:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


def start_server(servers: list[subprocess.Popen[str]], config: Config, tmp_path: Path) -> subprocess.Popen[str]:
    path = tmp_path / "configuration.toml"
    path.write_text(tomli_w.dumps(config.to_toml_dict()))
    server = subprocess.Popen([KATA_RUNTIME, "--kata-config", str(path), "factory", "init"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers.append(server)
    return server


def run_in(sb: Sandbox, bundle: Path, name: str) -> str:
    out = OutputBuffer()
    c = sb.create_container(bundle, container_id=name, stdout=out)
    c.start()
    assert c.wait() == 0, out.getvalue()
    c.delete()
    return out.getvalue().decode()


@pytest.mark.parametrize(("shared_fs", "base"), [
    ("virtio-fs", "direct"),
    ("virtio-9p", "direct"),
    ("virtio-fs", "template"),  # clones without a share: the sandbox hotplugs virtio-fs after adopting
    ("virtio-9p", "template"),  # clones whose 9p share is in the template
])
def test_a_sandbox_takes_a_cached_vm_over_and_the_cache_boots_the_next(
        shared_fs: str, base: str, short_tmp: Path, serve: list[subprocess.Popen[str]]) -> None:
    tmp_path = short_tmp
    config = cache_config(shared_fs, tmp_path, template=base == "template")
    server = start_server(serve, config, tmp_path)
    wait_ready(config, server)
    cached = asyncio.run(VmCacheClient(config.factory.vm_cache_endpoint).status()).vms[0]
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "bundle", "sh", "-c", "uname -r; echo $$; cat /proc/uptime; echo hi > /probe; "
                         "cat /probe")
    started = time.monotonic()
    with Sandbox.create(config, sandbox_id="cached", root=root) as sb:
        created = time.monotonic() - started
        assert sb.inner.record.vm.source == "cache"
        vmm = sb.pids[0]
        assert (root / "cached" / "qmp.sock").is_socket()  # the VM's dir became the sandbox's state dir
        assert Path(sb.inner.record.vm.console_log) == root / "cached" / "console.log"
        lines = run_in(sb, bundle, "c1").split()
        assert lines[0] != os.uname().release and lines[1] == "1" and lines[-1] == "hi"
        uptime = float(lines[2])
        assert uptime > created, "the guest booted before the sandbox was asked for"
        # The cache boots a replacement while this sandbox runs.
        wait_ready(config, server)
        assert status(config)["served"] == 1
        pids = sb.pids
    assert cached.processes[0].pid == vmm
    assert not alive(pids), "the sandbox stopped the VM it took over"
    assert not (root / "cached").exists()
    # SIGTERM: the server stops the VM it holds and removes its socket and dirs.
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert f"serving 1 {base} VMs" in out
    assert not Path(config.factory.vm_cache_endpoint).exists()
    assert not (tmp_path / "cache.sock.vms").exists()
    if base == "template":
        assert subprocess.run([KATA_RUNTIME, "--kata-config", str(tmp_path / "configuration.toml"), "factory",
                               "destroy"], capture_output=True, check=False).returncode == 0


def test_a_sandbox_of_another_shape_boots_its_own_and_destroy_stops_the_server(
        short_tmp: Path, serve: list[subprocess.Popen[str]]) -> None:
    tmp_path = short_tmp
    config = cache_config("virtio-fs", tmp_path)
    server = start_server(serve, config, tmp_path)
    wait_ready(config, server)
    bigger = config.hypervisor.default_memory + 128
    other = replace(config, hypervisor=replace(config.hypervisor, default_memory=bigger))
    with Sandbox.create(other, sandbox_id="own", root=tmp_path / "root") as sb:
        assert sb.inner.record.vm.source == "direct"
        assert run_in(sb, make_bundle(tmp_path / "bundle", "true"), "c1") == ""
    assert status(config) == {"ready": 1, "booting": 0, "served": 0, "failed": 0}
    path = tmp_path / "configuration.toml"
    done = subprocess.run([KATA_RUNTIME, "--kata-config", str(path), "factory", "destroy"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert server.wait(timeout=30) == 0
    assert not Path(config.factory.vm_cache_endpoint).exists()
