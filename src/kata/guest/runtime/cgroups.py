"""One cgroup v2 per container: path, limits (runc's fs2 conversions), freeze, kill, stats, removal."""

from __future__ import annotations

import errno
import os
import signal
import time

from kata.errors import OciError
from kata.guest.runtime.errors import CgroupError
from kata.guest.runtime.securejoin import clean_path, escapes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.stats import CgroupStats
    from kata.oci import CPU, BlockIO, Memory, Resources

__all__ = ["CONTROLLERS", "Cgroup", "cgroup_path", "parse_flat_keyed", "parse_max", "resource_files"]

# Controllers the runtime enables for container cgroups when the parent offers them.
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
DEFAULT_CPU_PERIOD = 100000
SETTLE_TIMEOUT = 5.0


def parse_flat_keyed(text: str) -> dict[str, int]:
    """"key value" lines (cgroup.events, memory.stat, cpu.stat) as a dict; other lines are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def parse_max(text: str) -> int | None:
    """A limit file ("max" or a number) as an int, None for "max"."""
    text = text.strip()
    return None if text in ("max", "") else int(text.split()[0])


def cgroup_path(root: str, container_id: str, cgroups_path: str) -> str:
    """Where the container's cgroup lives: ``linux.cgroupsPath`` under ``root``, else root/kata/<id>.

    A systemd-style "slice:prefix:name" becomes <slice dirs>/<prefix>-<name>.scope.

    Raises:
        OciError: when the path climbs out of ``root``.
    """
    if not cgroups_path:
        relative = f"/kata/{container_id}"
    elif ":" in cgroups_path and not cgroups_path.startswith("/"):
        slice_name, prefix, name = [*cgroups_path.split(":"), "", ""][:3]
        relative = _expand_slice(slice_name or "system.slice") + f"/{prefix}-{name}.scope"
    else:
        relative = cgroups_path
    if escapes(relative.lstrip("/")) or clean_path(relative) == "/":
        raise OciError(f"linux.cgroupsPath: {cgroups_path} escapes the cgroup root")
    return root.rstrip("/") + clean_path(relative)


def _expand_slice(name: str) -> str:
    """systemd's nesting: "a-b.slice" lives in "a.slice/a-b.slice"; "-.slice" is the root."""
    if name == "-.slice":
        return ""
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def _memory(memory: Memory) -> list[tuple[str, str]]:
    files = []
    if memory.reservation is not None:
        files.append(("memory.low", _limit(memory.reservation)))
    limit = memory.limit or 0
    swap = memory.swap or 0
    if memory.limit is not None:
        files.append(("memory.max", _limit(limit)))
    # runc's ConvertMemorySwapToCgroupV2Value: v1's memory+swap becomes v2's swap alone.
    if swap == -1 or (limit == -1 and swap == 0):
        files.append(("memory.swap.max", "max"))
    elif swap > 0:
        if limit <= 0:
            raise OciError("linux.resources.memory.swap: a swap limit needs a memory limit")
        if swap < limit:
            raise OciError("linux.resources.memory.swap: must be at least linux.resources.memory.limit")
        files.append(("memory.swap.max", str(swap - limit)))
    return files


def _cpu(cpu: CPU) -> list[tuple[str, str]]:
    files = []
    if cpu.shares:  # runc's ConvertCPUSharesToCgroupV2Value
        files.append(("cpu.weight", str(1 + ((cpu.shares - 2) * 9999) // 262142)))
    if cpu.quota is not None or cpu.period is not None:
        quota = "max" if cpu.quota is None or cpu.quota <= 0 else str(cpu.quota)
        files.append(("cpu.max", f"{quota} {cpu.period or DEFAULT_CPU_PERIOD}"))
    if cpu.burst is not None:
        files.append(("cpu.max.burst", str(cpu.burst)))
    if cpu.idle is not None:
        files.append(("cpu.idle", str(cpu.idle)))
    if cpu.cpus:
        files.append(("cpuset.cpus", cpu.cpus))
    if cpu.mems:
        files.append(("cpuset.mems", cpu.mems))
    return files


def _block_io(block_io: BlockIO) -> list[tuple[str, str]]:
    files = []
    if block_io.weight:  # runc's convertBlkIOToIOWeightValue
        files.append(("io.weight", f"default {1 + (block_io.weight - 10) * 9999 // 990}"))
    for device in block_io.weight_device:
        if device.weight:
            files.append(("io.weight", f"{device.major}:{device.minor} {device.weight}"))
    for devices, key in ((block_io.throttle_read_bps_device, "rbps"),
                         (block_io.throttle_write_bps_device, "wbps"),
                         (block_io.throttle_read_iops_device, "riops"),
                         (block_io.throttle_write_iops_device, "wiops")):
        files += [("io.max", f"{d.major}:{d.minor} {key}={d.rate}") for d in devices]
    return files


def resource_files(resources: Resources) -> list[tuple[str, str]]:
    """The cgroup v2 files and values that express ``resources``, in the order to write them.

    Device rules, network classes and v1-only memory knobs have no cgroup v2 file: they are skipped.

    Raises:
        OciError: naming the field, for an impossible swap limit or a unified key with a path in it.
    """
    files: list[tuple[str, str]] = []
    if resources.cpu is not None:
        files += _cpu(resources.cpu)
    if resources.memory is not None:
        files += _memory(resources.memory)
    if resources.pids is not None:
        files.append(("pids.max", str(resources.pids.limit) if resources.pids.limit > 0 else "max"))
    if resources.block_io is not None:
        files += _block_io(resources.block_io)
    for page in resources.hugepage_limits:
        files.append((f"hugetlb.{page.page_size}.max", str(page.limit)))
    for device, rdma in resources.rdma.items():
        limits = [f"hca_handle={rdma.hca_handles}" if rdma.hca_handles is not None else "",
                  f"hca_object={rdma.hca_objects}" if rdma.hca_objects is not None else ""]
        files.append(("rdma.max", " ".join([device, *filter(None, limits)])))
    for key, value in resources.unified.items():
        if "/" in key or key in ("", ".", ".."):
            raise OciError(f"linux.resources.unified: invalid key {key!r}")
        files.append((key, value))
    return files


def _limit(value: int) -> str:
    return "max" if value < 0 else str(value)


class Cgroup:
    """A container's cgroup directory under a cgroup v2 mount."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, root: str, path: str) -> Cgroup:
        """mkdir ``path`` (under ``root``), enabling the controllers on the way down.

        Raises:
            CgroupError: when the directory cannot be made or already has processes.
        """
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            _enable_controllers(root, parent)
            os.mkdir(path)
        except FileExistsError:
            if Cgroup(path).pids():
                raise CgroupError(f"cgroup {path}: already exists and has processes") from None
        except OSError as exc:
            raise CgroupError(f"cgroup {path}: {exc.strerror}") from exc
        return cls(path)

    @property
    def procs_file(self) -> str:
        return f"{self.path}/cgroup.procs"

    def _read(self, name: str) -> str | None:
        try:
            with open(f"{self.path}/{name}") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CgroupError(f"cgroup {self.path}: read {name}: {exc.strerror}") from exc

    def _write(self, name: str, value: str) -> None:
        try:
            fd = os.open(f"{self.path}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CgroupError(f"cgroup {self.path}: {name}: no such file (controller not enabled?)") from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise CgroupError(f"cgroup {self.path}: write {value!r} to {name}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def apply(self, resources: Resources) -> None:
        """Write the limits of ``resources``.

        Raises:
            OciError: for resources that cannot be expressed (see resource_files).
            CgroupError: naming the file and value the kernel refused.
        """
        for name, value in resource_files(resources):
            self._write(name, value)

    def pids(self) -> tuple[int, ...]:
        """Processes in the cgroup (cgroup.procs), as the agent sees them."""
        text = self._read("cgroup.procs") or ""
        return tuple(int(line) for line in text.split())

    def events(self) -> dict[str, int]:
        """cgroup.events: populated, frozen."""
        return parse_flat_keyed(self._read("cgroup.events") or "")

    def _settle(self, key: str, value: int, timeout: float = SETTLE_TIMEOUT) -> bool:
        delay = 0.001
        deadline = time.monotonic() + timeout
        while self.events().get(key, value) != value:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def freeze(self) -> None:
        """Freeze every process (cgroup.freeze) and wait until the kernel reports it frozen.

        Raises:
            CgroupError: when the freezer is missing or the cgroup does not freeze in time.
        """
        self._write("cgroup.freeze", "1")
        if not self._settle("frozen", 1):
            raise CgroupError(f"cgroup {self.path}: not frozen after {SETTLE_TIMEOUT:.0f} s")

    def thaw(self) -> None:
        """Let the processes run again.

        Raises:
            CgroupError: when cgroup.freeze cannot be written.
        """
        self._write("cgroup.freeze", "0")
        self._settle("frozen", 0)

    def kill(self) -> None:
        """SIGKILL every process, with cgroup.kill where the kernel has it (5.14+).

        Raises:
            CgroupError: when cgroup.kill cannot be written.
        """
        if os.path.exists(f"{self.path}/cgroup.kill"):
            self._write("cgroup.kill", "1")
            return
        for pid in self.pids():
            try:  # noqa: SIM105
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Kill what is left, wait until the cgroup is empty, and remove it (sub-cgroups first).

        Raises:
            CgroupError: when processes remain after ``timeout`` or rmdir fails.
        """
        if not os.path.isdir(self.path):
            return
        for directory, _, _ in sorted(os.walk(self.path), key=lambda entry: -len(entry[0])):
            group = Cgroup(directory)
            group.kill()
            if not group._settle("populated", 0, timeout):
                raise CgroupError(f"cgroup {directory}: processes remain after {timeout:.0f} s")
            _rmdir(directory)

    def read(self, name: str) -> str | None:
        """The text of one file of the cgroup, None when it does not exist (controller not enabled).

        Raises:
            CgroupError: when it exists but cannot be read.
        """
        return self._read(name)

    def stats(self) -> CgroupStats:
        """What the enabled controllers report (a missing controller gives None).

        Raises:
            CgroupError: when a file exists but cannot be read.
        """
        from kata.guest.runtime.stats import read_cgroup_stats  # only StatsContainer needs the types

        return read_cgroup_stats(self)

    def oom_kills(self) -> int:
        """memory.events' oom_kill count (0 without the memory controller)."""
        return parse_flat_keyed(self._read("memory.events") or "").get("oom_kill", 0)


def _enable_controllers(root: str, parent: str) -> None:
    """Enable the available controllers in ``root`` and each directory down to ``parent``."""
    directory = root.rstrip("/")
    chain = [directory]
    for part in parent[len(directory):].split("/"):
        if part:
            directory += "/" + part
            chain.append(directory)
    for directory in chain:
        try:
            with open(f"{directory}/cgroup.controllers") as fh:
                available = set(fh.read().split())
            with open(f"{directory}/cgroup.subtree_control") as fh:
                enabled = set(fh.read().split())
        except OSError:
            return
        for name in CONTROLLERS:
            if name in available and name not in enabled:
                _enable(directory, name)


def _enable(directory: str, controller: str) -> None:
    try:
        fd = os.open(f"{directory}/cgroup.subtree_control", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, f"+{controller}".encode())
        finally:
            os.close(fd)
    except OSError:
        # EBUSY (processes in a non-root cgroup) or a controller that cannot be enabled here: the
        # limits that need it fail later, naming their file.
        return


def _rmdir(path: str) -> None:
    delay = 0.001
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(f"cgroup {path}: rmdir: {exc.strerror}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise CgroupError(f"cgroup {path}: rmdir: still busy")
