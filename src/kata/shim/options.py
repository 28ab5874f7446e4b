"""The runtime options containerd hands the shim (runtimeoptions.v1.Options: ConfigPath), kept light for the
``start`` verb, which reads them before it spawns the daemon."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from kata.protocols.pb import runtimeoptions_pb2
from kata.ttrpc.status import InvalidArgumentError

__all__ = ["RUNTIME_OPTIONS", "config_path_from_any", "config_path_from_stdin"]

RUNTIME_OPTIONS = runtimeoptions_pb2.Options.DESCRIPTOR.full_name


def config_path_from_any(options: any_pb2.Any) -> str:
    """ConfigPath of runtimeoptions.v1.Options packed in ``options`` ("" for other or no options).

    Raises:
        InvalidArgumentError: the options claim to be runtime options but do not decode.
    """
    if options.type_url.rsplit("/", 1)[-1] != RUNTIME_OPTIONS:
        return ""
    try:
        return runtimeoptions_pb2.Options.FromString(options.value).config_path
    except DecodeError as exc:
        raise InvalidArgumentError(f"runtime options do not decode: {exc}") from exc


def config_path_from_stdin(data: bytes) -> str:
    """ConfigPath from what containerd writes to ``start``'s stdin: a serialized Any of the options.

    Raises:
        InvalidArgumentError: the bytes are not an Any or the options do not decode.
    """
    if not data:
        return ""
    try:
        options = any_pb2.Any.FromString(data)
    except DecodeError as exc:
        raise InvalidArgumentError(f"runtime options on stdin do not decode: {exc}") from exc
    return config_path_from_any(options)
