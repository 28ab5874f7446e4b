"""`kata-runtime spec [--bundle DIR] [--rootless]`: write runc's default config.json to the bundle."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-b", "--bundle", default=".", help="where to write config.json (default: here)")
    parser.add_argument("--rootless", action="store_true", help="a spec for a rootless container")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import json
    import os

    from kata.oci import default_spec, spec_to_json
    from kata.oci_cli.errors import OciCliError

    del ctx
    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise OciCliError("File config.json exists. Remove it first.")
    cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    data = json.dumps(spec_to_json(default_spec(args.rootless, cgroup_namespace=cgroup_v2)), indent="\t")
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(data)
    except OSError as exc:
        raise OciCliError(f"write {path}: {exc.strerror or exc}") from exc
    return 0
