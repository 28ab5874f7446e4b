"""`make demo`: run a busybox container inside a VM and show what it saw, beside the host's view."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from kata.config import load_config
from kata.errors import KataError
from kata.oci import Root, default_spec
from kata.oci.load import spec_to_json
from kata.sandbox import OutputBuffer, Sandbox, format_timeline

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "uname", "echo", "cat", "hostname", "id", "ps", "grep", "head", "cut")
SCRIPT = ('echo "kernel : $(uname -r)"; echo "pid    : $$"; echo "host   : $(hostname)"; '
          'echo "cpu    : $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)"; echo "procs  :"; ps')


def make_bundle(parent: Path) -> Path:
    """A bundle with a busybox rootfs and runc's default spec running the demo script."""
    rootfs = parent / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    for name in ("proc", "sys", "dev", "tmp", "etc"):
        (rootfs / name).mkdir()
    spec = default_spec()
    assert spec.process is not None
    process = replace(spec.process, args=("sh", "-c", SCRIPT), env=("PATH=/bin",), terminal=False)
    spec = replace(spec, root=Root(path="rootfs", readonly=False), process=process, hostname="pykata-demo")
    (parent / "config.json").write_text(json.dumps(spec_to_json(spec), indent=2))
    return parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pykata-demo-") as tmp:
        bundle = make_bundle(Path(tmp))
        print(f"host   : kernel {platform.release()}, pid of this demo {os.getpid()}")
        started = time.monotonic()
        status = 1
        try:
            with Sandbox.create(load_config(), hostname="pykata-demo") as sandbox:
                out = OutputBuffer()
                container = sandbox.create_container(bundle, container_id="demo", stdout=out, stderr=out)
                container.start()
                status = container.wait()
                print("--- inside the container (its own VM) ---")
                print(out.getvalue().decode(errors="replace"), end="")
                print(f"--- exit status {status}, {time.monotonic() - started:.1f} s in all ---")
                print(format_timeline(sandbox.timeline()))
        except KataError as exc:
            print(f"demo: error: {exc}", file=sys.stderr)
            return 1
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
