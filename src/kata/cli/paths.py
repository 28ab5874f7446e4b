"""`kata-runtime --show-default-config-paths`: the configuration search list, in order."""

from __future__ import annotations

from kata.cli.context import CliContext
from kata.config import default_config_paths

__all__ = ["show_default_config_paths"]


def show_default_config_paths(ctx: CliContext) -> int:
    """Print one path per line: --config (when given), KATA_CONF_FILE, the system paths."""
    explicit = [ctx.config_path] if ctx.config_path else []
    for path in [*explicit, *map(str, default_config_paths())]:
        print(path)
    return 0
