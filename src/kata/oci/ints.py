"""Integer kinds of the runtime spec: ``Annotated`` ints that carry the range JSON values must fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

__all__ = ["I32", "I64", "U16", "U32", "U64", "IntRange"]


@dataclass(frozen=True)
class IntRange:
    """The inclusive range of one Go integer type, and how an error message names it."""

    low: int
    high: int
    name: str

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


U16 = Annotated[int, IntRange(0, 2**16 - 1, "an unsigned 16-bit integer")]
U32 = Annotated[int, IntRange(0, 2**32 - 1, "an unsigned 32-bit integer")]
U64 = Annotated[int, IntRange(0, 2**64 - 1, "an unsigned 64-bit integer")]
I32 = Annotated[int, IntRange(-(2**31), 2**31 - 1, "a 32-bit integer")]
I64 = Annotated[int, IntRange(-(2**63), 2**63 - 1, "a 64-bit integer")]
