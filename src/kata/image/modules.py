"""Kernel modules for the guest: names resolved through modules.dep into a load order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kata.errors import ImageError

__all__ = [
    "GUEST_MODULES",
    "ModuleRequest",
    "ModuleResolution",
    "module_name",
    "parse_modules_builtin",
    "parse_modules_dep",
    "resolve_kernel_modules",
    "resolve_modules",
]


@dataclass(frozen=True)
class ModuleRequest:
    """A module the guest wants; ``required`` ones fail the build when the kernel lacks them."""

    name: str
    required: bool = False
    why: str = ""


# In load order (dependencies are pulled in before each). The serial agent channel comes first so
# the guest can answer as early as possible (on q35 the guest loads virtio_mmio at low priority once
# the channel's modules are in); then what the container rootfs share needs (a storage mount waits
# only for its own modules); then vsock (a vsock channel waits for the shares' modules too); then
# devices the runtime may hotplug later.
GUEST_MODULES: tuple[ModuleRequest, ...] = (
    ModuleRequest("virtio_pci", True, "virtio devices on q35"),
    ModuleRequest("virtio_console", True, "agent channel (virtio-serial)"),
    ModuleRequest("virtio_mmio", False, "virtio devices on microvm"),
    ModuleRequest("fuse", False, "virtio-fs"),
    ModuleRequest("virtiofs", False, "shared container rootfs (default)"),
    ModuleRequest("9pnet_virtio", False, "9p transport (generic kernel only)"),
    ModuleRequest("9p", False, "shared container rootfs (9p fallback)"),
    ModuleRequest("vsock", False, "agent channel (vsock)"),
    ModuleRequest("vmw_vsock_virtio_transport", False, "agent channel (vsock)"),
    ModuleRequest("overlay", False, "container rootfs layers"),
    ModuleRequest("virtio_blk", False, "block rootfs and volumes"),
    ModuleRequest("virtio_scsi", False, "block devices on virtio-scsi"),
    ModuleRequest("virtio_net", False, "networking (pulls failover, net_failover)"),
    ModuleRequest("erofs", False, "read-only image layers and rootfs images"),
    ModuleRequest("squashfs", False, "squashfs images"),
    ModuleRequest("nd_pmem", False, "nvdimm rootfs images"),
    ModuleRequest("virtio_pmem", False, "virtio-pmem (DAX) rootfs images"),
    ModuleRequest("nfit", False, "nvdimm devices from ACPI"),
    ModuleRequest("virtio_balloon", False, "memory balloon"),
    ModuleRequest("virtio_mem", False, "memory hotplug"),
)

MODULE_SUFFIX = ".ko"


def module_name(path: str) -> str:
    """The kernel's name for a module file: ``kernel/drivers/char/hw_random/virtio-rng.ko`` -> virtio_rng."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", MODULE_SUFFIX):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``modules.dep`` as name -> (path, dependency paths as listed).

    Raises:
        ImageError: on a line without the ``path:`` separator.
    """
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise ImageError(f"modules.dep line {number}: no ':' in {line!r}")
        found[module_name(path)] = (path.strip(), tuple(deps.split()))
    return found


def parse_modules_builtin(text: str) -> frozenset[str]:
    """Names of the modules built into the kernel (``modules.builtin``)."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class ModuleResolution:
    """What to load (paths relative to lib/modules/<release>, in order) and what needs nothing."""

    load_order: tuple[str, ...]
    builtin: tuple[str, ...]
    missing: tuple[str, ...]


def resolve_modules(requests: Iterable[ModuleRequest],
                    deps: Mapping[str, tuple[str, tuple[str, ...]]],
                    builtin: frozenset[str]) -> ModuleResolution:
    """Order the requested modules and their dependencies so each loads after what it needs.

    modules.dep lists every (transitive) dependency; modprobe loads them last-listed first. We
    recurse into each dependency's own entry instead, which gives a valid order whatever the
    listing order is.

    Raises:
        ImageError: when a required module is neither a module nor built in, or a dependency
            named in modules.dep has no entry of its own.
    """
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order or path in visiting:
            return
        visiting.add(path)
        name = by_path.get(path)
        if name is None:
            raise ImageError(f"modules.dep: dependency {path} has no entry of its own")
        for dep in reversed(deps[name][1]):
            visit(dep)
        visiting.discard(path)
        order.append(path)

    built: list[str] = []
    missing: list[str] = []
    for request in requests:
        if request.name in deps:
            visit(deps[request.name][0])
        elif request.name in builtin:
            built.append(request.name)
        elif request.required:
            raise ImageError(f"kernel has no module {request.name} ({request.why}), built in or not")
        else:
            missing.append(request.name)
    return ModuleResolution(tuple(order), tuple(built), tuple(missing))


def resolve_kernel_modules(modules_dir: Path,
                           requests: Iterable[ModuleRequest] = GUEST_MODULES) -> ModuleResolution:
    """:func:`resolve_modules` against a kernel's ``lib/modules/<release>`` directory.

    Raises:
        ImageError: when modules.dep is missing (run depmod) or the resolution fails, or a module
            to load is compressed (the guest loads plain ``.ko`` files).
    """
    try:
        dep_text = (modules_dir / "modules.dep").read_text()
    except OSError as exc:
        raise ImageError(f"{modules_dir}/modules.dep: {exc.strerror} (run depmod)") from exc
    builtin_file = modules_dir / "modules.builtin"
    builtin_text = builtin_file.read_text() if builtin_file.exists() else ""
    resolution = resolve_modules(requests, parse_modules_dep(dep_text), parse_modules_builtin(builtin_text))
    compressed = [path for path in resolution.load_order if not path.endswith(MODULE_SUFFIX)]
    if compressed:
        raise ImageError(f"compressed kernel modules are not supported: {', '.join(compressed)}")
    return resolution
