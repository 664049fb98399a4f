"""The launcher's exception for a configuration mistake (exit 2, nothing ran)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration mistake; the message names the problem and the fix."""
