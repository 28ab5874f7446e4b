"""Reading the JSON files a verb is given (config.json, process.json, resources.json) as one object."""

from __future__ import annotations

import json
import sys
from typing import Any

from kata.oci_cli.errors import OciCliError

__all__ = ["load_object"]


def load_object(path: str, *, what: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``-``: standard input); ``what`` names it in errors.

    Raises:
        OciCliError: it cannot be read, is not JSON, or is not a JSON object.
    """
    try:
        if path == "-":
            data = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
    except OSError as exc:
        raise OciCliError(f"open {what} {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise OciCliError(f"{what} {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OciCliError(f"{what} {path} is not a JSON object")
    return data
