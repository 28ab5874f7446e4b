"""The guest side: PID-1 bootstrap (init), the agent channel and the agent that serves on it.

Everything here runs inside the VM under Debian's python3.11 and must import nothing host-only
(and nothing slow: asyncio costs ~0.6 s under TCG). The image builder checks both.
"""

from __future__ import annotations

__all__: list[str] = []
