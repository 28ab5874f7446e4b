"""What every verb gets: the global options and the lazily loaded configuration."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kata.config import LoadedConfig
    from kata.oci_cli.runtime import OciRuntime

__all__ = ["DEFAULT_ROOT", "CliContext"]

DEFAULT_ROOT = "/run/kata"


@dataclass(frozen=True)
class CliContext:
    """Global options of one kata-runtime invocation."""

    root: str = os.environ.get("KATA_ROOT", DEFAULT_ROOT)
    config_path: str | None = None
    debug: bool = False
    log: str | None = None
    log_format: str = "text"

    @functools.cached_property
    def loaded(self) -> LoadedConfig:
        """The effective configuration (loaded on first use).

        Raises:
            ConfigError: when the configuration is invalid.
        """
        from kata.config import load_config
        return load_config(self.config_path)

    @functools.cached_property
    def runtime(self) -> OciRuntime:
        """The OCI runtime's containers under --root (the OCI verbs' entry); their sandboxes' state under
        $KATA_ROOT or /run/kata."""
        from pathlib import Path

        from kata.oci_cli.runtime import OciRuntime
        sandbox_root = Path(os.environ.get("KATA_ROOT") or DEFAULT_ROOT).absolute()
        return OciRuntime(Path(self.root).absolute(), sandbox_root=sandbox_root, config_path=self.config_path,
                          debug=self.debug)
