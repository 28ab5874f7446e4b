"""kata-runtime factory init|status|destroy: the VM template of the effective configuration."""

from __future__ import annotations

import argparse
import json

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``factory init [--force] | status [--json] | destroy``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="make the VM template (kept when it is fresh)")
    init.add_argument("--force", action="store_true", help="remake it even when it is fresh")
    status = actions.add_parser("status", help="show the template, whether it is fresh, and KSM")
    status.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("destroy", help="remove the VM template (running clones are not affected)")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Run the action.

    Raises:
        FactoryError: the template could not be made.
        HypervisorError, ConfigError: the configuration does not give a VM.
    """
    import asyncio

    from kata.factory import Template

    template = Template(ctx.loaded.config)
    if args.action == "init":
        if args.force:
            info, made = asyncio.run(template.build()), True
        else:
            info, made = asyncio.run(template.ensure())
        verb = "made" if made else "fresh, kept"
        print(f"template {template.paths.root}: {verb} (key {info.key}, boot {info.boot_seconds:.2f} s, "
              f"state {info.state_bytes} bytes)")
        return 0
    if args.action == "destroy":
        existed = asyncio.run(template.destroy())
        print(f"template {template.paths.root}: {'removed' if existed else 'none'}")
        return 0
    return _status(ctx, template, as_json=args.json)


def _status(ctx: CliContext, template: object, *, as_json: bool) -> int:
    import asyncio

    from kata.factory import Template
    from kata.factory.ksm import ksm_status

    assert isinstance(template, Template)
    status = asyncio.run(template.status())
    ksm = ksm_status()
    factory = ctx.loaded.config.factory
    data = {"enable_template": factory.enable_template, "template_path": str(status.paths.root),
            "key": status.key, "fresh": status.fresh,
            "template": status.info.to_json() if status.info is not None else None,
            "enable_ksm": factory.enable_ksm,
            "ksm": {"available": ksm.available, "run": ksm.run, "pages_shared": ksm.pages_shared,
                    "pages_sharing": ksm.pages_sharing, "saved_mib": round(ksm.saved_mib, 1)}}
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    state = "none" if status.info is None else ("fresh" if status.fresh else "stale (remade on next use)")
    print(f"template:      {status.paths.root} ({state}; enable_template = {str(factory.enable_template).lower()})")
    if status.info is not None:
        print(f"  key          {status.info.key} (current {status.key})\n"
              f"  shared_fs    {status.info.shared_fs}, {status.info.memory_mib} MiB, kernel {status.info.kernel}\n"
              f"  boot         {status.info.boot_seconds:.2f} s to a ready agent when made")
    if ksm.available:
        print(f"ksm:           run={ksm.run} pages_shared={ksm.pages_shared} pages_sharing={ksm.pages_sharing} "
              f"(saves {ksm.saved_mib:.1f} MiB; enable_ksm = {str(factory.enable_ksm).lower()})")
    else:
        print("ksm:           not available on this host")
    return 0
