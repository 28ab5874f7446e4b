"""The agent's options from the kernel command line (``agent.*`` parameters, as Kata's agent reads them)."""

from __future__ import annotations

__all__ = ["DEFAULT_SERVER_ADDR", "GuestOptions", "parse_cmdline", "parse_server_addr"]

DEFAULT_SERIAL_PORT = "agent.channel.0"
DEFAULT_VSOCK_PORT = 1024
DEFAULT_SERVER_ADDR = f"serial://{DEFAULT_SERIAL_PORT}"


def parse_server_addr(addr: str) -> tuple[str, str]:
    """``serial://NAME`` -> ("serial", NAME); ``vsock://CID:PORT`` -> ("vsock", PORT).

    Raises:
        ValueError: for another scheme or a malformed address.
    """
    scheme, sep, rest = addr.partition("://")
    if not sep or not rest:
        raise ValueError(f"agent.server_addr {addr!r}: expected serial://NAME or vsock://CID:PORT")
    if scheme == "serial":
        return "serial", rest
    if scheme == "vsock":
        port = rest.rpartition(":")[2]
        if not port.isdigit():
            raise ValueError(f"agent.server_addr {addr!r}: vsock port must be a number")
        return "vsock", port
    raise ValueError(f"agent.server_addr {addr!r}: unknown scheme {scheme!r}")


class GuestOptions:
    """What the host told the guest on the kernel command line."""

    __slots__ = ("channel_kind", "channel_name", "channel_timeout", "log_level", "problems")

    def __init__(self) -> None:
        self.channel_kind = "serial"
        self.channel_name = DEFAULT_SERIAL_PORT
        self.channel_timeout = 10.0
        self.log_level = "info"
        # Bad parameters do not stop the boot (the agent must answer); they are logged.
        self.problems: list[str] = []


def parse_cmdline(text: str) -> GuestOptions:
    """Options from ``/proc/cmdline``: ``agent.server_addr``, ``agent.log``, ``agent.channel_timeout``."""
    options = GuestOptions()
    for word in text.split():
        key, _, value = word.partition("=")
        try:
            if key == "agent.server_addr":
                options.channel_kind, options.channel_name = parse_server_addr(value)
            elif key == "agent.log":
                options.log_level = value
            elif key == "agent.channel_timeout":
                options.channel_timeout = float(value)
        except ValueError as exc:
            options.problems.append(str(exc))
    return options
