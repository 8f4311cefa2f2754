"""fairjax exceptions (the leaf of the import graph: imports nothing of fairjax, no jax)."""
from __future__ import annotations

from typing import Mapping, Sequence


class ConfigError(ValueError):
    """A model/config file is invalid or unsupported; the message names the file/key."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: lists missing keys, unexpected keys and shapes.

    Attributes `missing`, `unexpected` (lists of keys) and `mismatched`
    ({key: (expected_shape, got_shape)}) are kept for programmatic use.
    """

    def __init__(self, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Mapping[str, tuple] | None = None, source: str = "checkpoint",
                 note: str | None = None):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = dict(mismatched or {})
        self.source = source
        lines = [f"{source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, (want, got) in self.mismatched.items():
            lines.append(f"  shape mismatch {key}: expected {list(want)}, got {list(got)}")
        if note:
            lines.append("  " + note)
        super().__init__("\n".join(lines))
