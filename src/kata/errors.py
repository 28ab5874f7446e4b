"""The one exception root of pykata and its tree.

Every error pykata raises on purpose derives from :class:`KataError`. Layers wrap
lower-level errors with ``raise XError("context: ...") from exc`` and never branch
on message text::

    KataError
     ├── ConfigError            bad configuration.toml, drop-in or annotation
     ├── UsageError             bad command-line arguments (CLI exit code 2)
     ├── NotImplementedYetError an entry point whose issue has not landed (exit code 2)
     ├── HostError              the host lacks something pykata needs
     ├── ImageError             building or locating the guest kernel/image failed
     ├── HypervisorError        starting, probing or driving a VMM failed
     │    ├── AcceleratorError  no usable accelerator (neither KVM nor TCG)
     │    └── QmpError          QEMU answered a QMP command with an error (kata.hypervisor.qemu)
     ├── ProtocolError          malformed ttRPC frame or protobuf payload
     ├── RpcError               an RPC answered with a non-OK gRPC status
     ├── AgentError             the guest agent is unreachable or misbehaved
     ├── OciError               malformed OCI bundle or config.json
     ├── NetworkError           reading, wiring or tearing down a sandbox's host network failed
     ├── FactoryError           making, checking or cloning a VM template failed (kata.factory)
     └── StateError             an operation not allowed in the current state

CLI exit codes (documented in README): 0 success, 1 error, 2 usage error or a
verb that is not implemented yet.
"""

from __future__ import annotations

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "AcceleratorError",
    "AgentError",
    "ConfigError",
    "FactoryError",
    "HostError",
    "HypervisorError",
    "ImageError",
    "KataError",
    "NetworkError",
    "NotImplementedYetError",
    "OciError",
    "ProtocolError",
    "RpcError",
    "StateError",
    "UsageError",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class KataError(Exception):
    """Root of every error pykata raises on purpose."""

    exit_code = EXIT_ERROR


class ConfigError(KataError):
    """Configuration is invalid; the message names the file, the key and the problem."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.key = key


class UsageError(KataError):
    """The command line is malformed."""

    exit_code = EXIT_USAGE


class NotImplementedYetError(KataError):
    """An entry point or verb whose issue has not landed yet."""

    exit_code = EXIT_USAGE


class HostError(KataError):
    """The host lacks a device, binary or capability pykata needs."""


class ImageError(KataError):
    """The guest kernel or image cannot be built or found."""


class HypervisorError(KataError):
    """A VMM could not be started, probed or driven."""


class AcceleratorError(HypervisorError):
    """Neither KVM nor TCG can run a guest on this host."""


class ProtocolError(KataError):
    """A peer sent bytes that do not follow the wire protocol."""


class RpcError(KataError):
    """An RPC completed with a non-OK gRPC status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AgentError(KataError):
    """The guest agent is unreachable or answered wrongly."""


class OciError(KataError):
    """An OCI bundle or its config.json is malformed."""


class NetworkError(KataError):
    """A sandbox's host network could not be read, wired to the VM or torn down (kata.network)."""


class FactoryError(KataError):
    """Making, checking or cloning a VM template failed."""


class StateError(KataError):
    """An operation was attempted in a state that does not allow it."""

    def __init__(self, message: str, *, state: str, required: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.state = state
        self.required = required
