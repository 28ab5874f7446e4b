"""kata-runtime's network verbs on a sandbox no shim serves (made by the library, then detached): the list
verbs load it from its state, hotplug is refused with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kata.sandbox import Sandbox
from tests.cni import cni_netns
from tests.vm.test_sandbox import config_for

pytestmark = pytest.mark.vm
KATA_RUNTIME = str(Path(sys.executable).parent / "kata-runtime")


def kata_runtime(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KATA_RUNTIME, "--root", str(root), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_list_verbs_load_a_detached_sandbox_and_hotplug_is_refused(tmp_path: Path) -> None:
    config = config_for("virtio-fs")
    root = tmp_path / "run"
    with cni_netns(tmp_path, name="pykatacli", subnet="10.88.82.0/24", bridge="pkcli0") as ns:
        sb = Sandbox.create(config, root=root, sandbox_id="clisb", netns=ns.path)
        try:
            sb.detach()
            listed = kata_runtime(root, "list-ifaces", "clisb")
            assert listed.returncode == 0, listed.stderr
            eth0 = next(i for i in json.loads(listed.stdout) if i["name"] == "eth0")
            assert {"address": ns.address, "mask": str(ns.prefix)} in eth0["IPAddresses"]
            routes = kata_runtime(root, "list-routes", "clisb")
            assert routes.returncode == 0, routes.stderr
            assert {"gateway": ns.gateway, "device": "eth0"} in json.loads(routes.stdout)
            refused = kata_runtime(root, "add-iface", "clisb", "eth1")
            assert (refused.returncode, refused.stderr) == (
                1, "kata-runtime: error: add-iface clisb: no shim serves this sandbox: only the process that started "
                   "its VM can hotplug interfaces\n")
        finally:
            Sandbox.load("clisb", root=root).delete()
