"""kata.run: one command in a fresh sandbox, from a bundle or a bare rootfs dir, output collected."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kata.config import Config, LoadedConfig
from kata.errors import OciError
from kata.oci import Bundle, Root, default_spec, load_bundle
from kata.sandbox.sandbox import AsyncSandbox
from kata.sandbox.stdio import OutputBuffer

__all__ = ["Result", "arun", "bundle_for", "run"]


@dataclass(frozen=True)
class Result:
    """How the command ended: its output and exit code (128+signal when killed)."""

    stdout: bytes
    stderr: bytes
    exit_code: int


def bundle_for(path: str | os.PathLike[str], argv: Sequence[str] | None = None) -> Bundle:
    """A bundle dir (config.json; ``argv`` replaces its args) or a rootfs dir (runc's default spec,
    writable root, no terminal, running ``argv``).

    Raises:
        OciError: the directory is missing, its config.json is bad, or a rootfs dir comes without argv.
    """
    directory = os.path.abspath(os.fspath(path))
    if os.path.exists(os.path.join(directory, "config.json")):
        bundle = load_bundle(directory)
        if argv is None or bundle.spec.process is None:
            return bundle
        process = replace(bundle.spec.process, args=tuple(argv), terminal=False)
        return replace(bundle, spec=replace(bundle.spec, process=process))
    if not os.path.isdir(directory):
        raise OciError(f"{directory}: not a directory")
    if not argv:
        raise OciError(f"{directory} is a rootfs (no config.json): give the command to run")
    spec = default_spec()
    assert spec.process is not None
    spec = replace(spec, root=Root(path=directory, readonly=False), hostname="kata",
                   process=replace(spec.process, args=tuple(argv), terminal=False))
    return Bundle(path=directory, spec=spec)


async def arun(path: str | os.PathLike[str], argv: Sequence[str] | None = None, *,
               config: Config | LoadedConfig | None = None, stdin: bytes | None = None,
               root: str | os.PathLike[str] | None = None) -> Result:
    """Run ``argv`` in a new sandbox and container, collect stdout and stderr, delete both.

    Raises:
        OciError: see :func:`bundle_for`.
        KataError: the sandbox or container could not be created (see :meth:`AsyncSandbox.create`).
    """
    bundle = bundle_for(path, argv)
    stdout, stderr = OutputBuffer(), OutputBuffer()
    async with AsyncSandbox.create(config, root=root) as sandbox:
        container = await sandbox.create_container(bundle, stdin=stdin, stdout=stdout, stderr=stderr)
        await container.start()
        code = await container.wait()
    return Result(stdout.getvalue(), stderr.getvalue(), code)


def run(path: str | os.PathLike[str], argv: Sequence[str] | None = None, *,
        config: Config | LoadedConfig | None = None, stdin: bytes | None = None,
        root: str | os.PathLike[str] | None = None) -> Result:
    """Blocking :func:`arun` (not from inside a running event loop: await :func:`arun` there).

    Raises:
        OciError, KataError: see :func:`arun`.
        RuntimeError: called from a running event loop.
    """
    return asyncio.run(arun(path, argv, config=config, stdin=stdin, root=root))
