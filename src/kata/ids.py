"""The rule for sandbox and container ids: each becomes a directory name under the state root.

Its own dependency-free module so that the short-lived CLI verbs can check ids without importing the
sandbox library; every layer raises its own error with the words of :data:`ID_RULE`.
"""

from __future__ import annotations

import re

__all__ = ["ID_RULE", "valid_id"]

ID_RULE = "use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_id(value: str) -> bool:
    """Whether ``value`` can be a sandbox or container id."""
    return _ID.fullmatch(value) is not None
