"""Reading and writing config.json: bundles, parsing with validation, and dumping back to JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, TypeVar

from kata.errors import OciError
from kata.oci import codec
from kata.oci.model import Process, Spec
from kata.oci.rules import validate

__all__ = [
    "Bundle",
    "load_bundle",
    "load_process",
    "process_from_json",
    "process_to_json",
    "spec_from_json",
    "spec_to_json",
]

T = TypeVar("T")

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class Bundle:
    """An OCI bundle: its absolute directory and the parsed config.json."""

    path: str
    spec: Spec

    @property
    def rootfs(self) -> str:
        """The absolute root filesystem path (``root.path`` is relative to the bundle unless absolute)."""
        assert self.spec.root is not None  # load_bundle rejects a spec without root
        return os.path.join(self.path, self.spec.root.path)


def _from_json(cls: type[T], data: object, source: str) -> T:
    try:
        obj = codec.decode(cls, data)
    except codec.FieldError as problem:
        raise OciError(problem.render(source)) from None
    validate(obj, source=source)
    return obj


def spec_from_json(data: object, *, source: str = CONFIG_NAME) -> Spec:
    """The Spec of a parsed config.json document; unknown keys are ignored.

    Raises:
        OciError: one line naming the JSON path of the first problem, e.g.
            ``config.json: process.args[0]: expected a string, got 3``.
    """
    return _from_json(Spec, data, source)


def process_from_json(data: object, *, source: str = "process.json") -> Process:
    """The Process of a parsed process.json (``exec --process``).

    Raises:
        OciError: as spec_from_json, naming ``source``.
    """
    return _from_json(Process, data, source)


def spec_to_json(spec: Spec) -> dict[str, Any]:
    """The config.json document of a Spec, unset and empty optional fields left out."""
    return codec.encode(spec)


def process_to_json(process: Process) -> dict[str, Any]:
    """The JSON document of a Process."""
    return codec.encode(process)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_json(path: str, source: str) -> object:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise OciError(f"{source}: cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise OciError(f"{source}: not UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise OciError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise OciError(f"{source}: invalid JSON: {exc}") from None


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and check ``<path>/config.json``.

    Raises:
        OciError: the directory or config.json cannot be read, is not JSON, or is not a valid spec.
    """
    directory = os.path.abspath(os.fspath(path))
    if not os.path.isdir(directory):
        raise OciError(f"bundle {directory}: not a directory")
    data = _read_json(os.path.join(directory, CONFIG_NAME), CONFIG_NAME)
    return Bundle(path=directory, spec=spec_from_json(data))


def load_process(path: str | os.PathLike[str]) -> Process:
    """Read and check a process.json file (``exec --process``).

    Raises:
        OciError: the file cannot be read, is not JSON, or is not a valid process.
    """
    name = os.path.basename(os.fspath(path))
    return process_from_json(_read_json(os.fspath(path), name), source=name)
