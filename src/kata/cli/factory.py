"""kata-runtime factory init|status|destroy: the VM template and the VM cache of the effective configuration.

With ``[factory] vm_cache_number`` > 0, ``init`` runs the VM cache server in the foreground (as Kata's
does) until ``destroy``, SIGTERM or SIGINT; ``status`` asks it what it holds.
"""

from __future__ import annotations

import argparse
import json
import os

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``factory init [--force] | status [--json] | destroy``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="make the VM template (kept when it is fresh); with vm_cache_number > 0, "
                              "serve the VM cache in the foreground")
    init.add_argument("--force", action="store_true", help="remake it even when it is fresh")
    status = actions.add_parser("status", help="show the template (fresh or stale), the VM cache and KSM")
    status.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("destroy", help="stop the VM cache server and remove the VM template (running sandboxes "
                       "are not affected)")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Run the action.

    Raises:
        FactoryError: the template could not be made.
        HypervisorError, ConfigError: the configuration does not give a VM.
    """
    import asyncio

    from kata.factory import Template

    config = ctx.loaded.config
    template = Template(config)
    if args.action == "init":
        if config.factory.enable_template or not config.factory.vm_cache_number:
            if args.force:
                info, made = asyncio.run(template.build()), True
            else:
                info, made = asyncio.run(template.ensure())
            verb = "made" if made else "fresh, kept"
            print(f"template {template.paths.root}: {verb} (key {info.key}, boot {info.boot_seconds:.2f} s, "
                  f"state {info.state_bytes} bytes)", flush=True)
        if config.factory.vm_cache_number:
            asyncio.run(_serve_cache(ctx))
        return 0
    if args.action == "destroy":
        if config.factory.vm_cache_number:
            print(f"vm cache {config.factory.vm_cache_endpoint}: {asyncio.run(_quit_cache(ctx))}")
        existed = asyncio.run(template.destroy())
        print(f"template {template.paths.root}: {'removed' if existed else 'none'}")
        return 0
    return _status(ctx, template, as_json=args.json)


async def _serve_cache(ctx: CliContext) -> None:
    from kata.factory.cache_server import CacheServer, serve_cache

    config = ctx.loaded.config

    def ready(cache: CacheServer) -> None:
        print(f"vm cache {config.factory.vm_cache_endpoint}: serving {cache.number} {cache.base} VMs "
              f"(pid {os.getpid()}; `kata-runtime factory destroy` stops it)", flush=True)

    await serve_cache(config, on_ready=ready)


async def _quit_cache(ctx: CliContext) -> str:
    from kata.errors import KataError
    from kata.factory.cache import VmCacheClient

    try:
        await VmCacheClient(ctx.loaded.config.factory.vm_cache_endpoint).quit()
    except (KataError, OSError, TimeoutError):
        return "no server"
    return "stopped"


async def _cache_status(ctx: CliContext) -> dict[str, object] | None:
    from google.protobuf.json_format import MessageToDict

    from kata.errors import KataError
    from kata.factory.cache import VmCacheClient

    try:
        status = await VmCacheClient(ctx.loaded.config.factory.vm_cache_endpoint).status()
    except (KataError, OSError, TimeoutError):
        return None
    return MessageToDict(status, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


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
            "vm_cache_number": factory.vm_cache_number, "vm_cache_endpoint": factory.vm_cache_endpoint,
            "vm_cache": asyncio.run(_cache_status(ctx)) if factory.vm_cache_number else None,
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
    if factory.vm_cache_number:
        cache = data["vm_cache"]
        if not isinstance(cache, dict):
            print(f"vm cache:      {factory.vm_cache_endpoint}: no server (`kata-runtime factory init` runs it)")
        else:
            print(f"vm cache:      {factory.vm_cache_endpoint} (pid {cache['pid']}, {cache['source']} VMs): "
                  f"{cache['ready']}/{cache['number']} ready, {cache['booting']} booting, {cache['served']} "
                  f"handed over, {cache['failed']} failed")
    if ksm.available:
        print(f"ksm:           run={ksm.run} pages_shared={ksm.pages_shared} pages_sharing={ksm.pages_sharing} "
              f"(saves {ksm.saved_mib:.1f} MiB; enable_ksm = {str(factory.enable_ksm).lower()})")
    else:
        print("ksm:           not available on this host")
    return 0
