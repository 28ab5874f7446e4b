"""Where the OCI CLI keeps a container's files: ``<root>/.oci/<id>/`` beside the sandbox's ``<root>/<id>/``
(the leading dot keeps it apart from sandbox ids, which start with a letter or digit), and its record."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kata.ids import ID_RULE, valid_id
from kata.oci_cli.errors import ContainerNotFoundError, OciCliError

__all__ = [
    "OCI_DIR",
    "ContainerPaths",
    "ContainerRecord",
    "check_container_id",
    "container_ids",
    "is_alive",
    "now_rfc3339",
    "process_start_time",
    "short_path",
    "write_atomically",
]

OCI_DIR = ".oci"


def check_container_id(container_id: str) -> str:
    """``container_id`` when it can name a container (and its sandbox).

    Raises:
        OciCliError: it cannot.
    """
    if not valid_id(container_id):
        raise OciCliError(f"invalid container id {container_id!r}: {ID_RULE}")
    return container_id


@dataclass(frozen=True)
class ContainerPaths:
    """The OCI CLI's files of one container."""

    root: Path
    container_id: str

    @property
    def directory(self) -> Path:
        """``<root>/.oci/<id>``."""
        return self.root / OCI_DIR / self.container_id

    @property
    def socket(self) -> Path:
        """The sandbox daemon's ttRPC socket."""
        return self.directory / "daemon.sock"

    @property
    def log(self) -> Path:
        """The sandbox daemon's log (its stderr)."""
        return self.directory / "daemon.log"

    @property
    def record(self) -> Path:
        """state.json: what the verbs need after ``create`` exited."""
        return self.directory / "state.json"

    def io_dir(self, exec_id: str) -> Path:
        """FIFOs of one process's stdio (init: exec id "")."""
        return self.directory / "io" / (exec_id or "init")


@dataclass
class ContainerRecord:
    """A container as ``create`` made it (state.json of the OCI CLI)."""

    id: str
    bundle: str
    rootfs: str
    created: str  # RFC 3339 with nanoseconds, as runc prints it
    owner: str = ""
    pid: int = 0  # the init process proxy's pid (0 until written)
    pid_start: int = 0  # its start time (/proc/<pid>/stat field 22): a reused pid is not ours
    daemon_pid: int = 0
    daemon_start: int = 0
    sandbox_root: str = ""  # where the daemon keeps the sandbox's state (<sandbox_root>/<id>)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The stored form."""
        return asdict(self)

    @classmethod
    def load(cls, paths: ContainerPaths) -> ContainerRecord:
        """Read the record.

        Raises:
            ContainerNotFoundError: there is none (or it is unreadable: a create that did not finish).
        """
        try:
            data = json.loads(paths.record.read_text())
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            raise ContainerNotFoundError(paths.container_id) from None

    def save(self, paths: ContainerPaths) -> None:
        """Write the record atomically."""
        write_atomically(paths.record, json.dumps(self.to_json(), indent=1))


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside ``path``, fsync, rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(temporary, path)


def container_ids(root: Path) -> list[str]:
    """The containers under ``root``, sorted."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in (root / OCI_DIR).iterdir() if (p / "state.json").exists())
    return []


def now_rfc3339(at: float | None = None) -> str:
    """``at`` (default now) as Go's time.Time JSON: UTC with nanoseconds."""
    nanos = time.time_ns() if at is None else int(at * 1e9)
    seconds, fraction = divmod(nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (0 when the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[19])


def is_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` still names the process that started at ``start_time`` (and is not a zombie)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    rest = stat.rpartition(")")[2].split()
    return rest[0] != "Z" and int(rest[19]) == start_time


SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the NUL


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """``path``, or when it is too long for a unix socket address (containerd's --root and a 64-digit id
    are), the same file reached through ``/proc/self/fd/<directory fd>/<name>``."""
    if len(path.encode()) <= SUN_PATH_MAX:
        yield path
        return
    directory = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)
