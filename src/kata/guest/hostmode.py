"""Host mode: the agent as an ordinary process on a unix socket, directories as storage (for tests).

``python -m kata.guest.hostmode --socket PATH --root DIR [--cgroup-root DIR]``. Run it in its own
mount and UTS namespaces (e.g. ``unshare --mount --uts --ipc --propagation private``): CreateSandbox
sets the hostname and storages are mounted below ``--root``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

from kata.guest.log import GuestLog
from kata.guest.runtime import ThreadWatcher
from kata.guest.server import build_server

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kata.guest.hostmode", description=__doc__)
    parser.add_argument("--socket", required=True, help="unix socket to listen on")
    parser.add_argument("--root", required=True, help="directory standing in for /run/kata-containers")
    parser.add_argument("--cgroup-root", default=None, help="cgroup v2 directory for container cgroups")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    log = GuestLog(level=args.log_level)
    os.makedirs(args.root, exist_ok=True)
    resolv = os.path.join(args.root, "resolv.conf")
    server = build_server(log, ThreadWatcher(), cgroup_root=args.cgroup_root, allowed_root=args.root,
                          init_daemon=False, resolv_conf=resolv)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(16)
    server.add_listener(listener)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown(grace=1.0, wait=False))
    log.info("host-mode agent serving", socket=args.socket, root=args.root)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
