"""User-facing errors. Each message names what is wrong (layer, field, value) and how to fix it."""

from __future__ import annotations


class LayerlensError(Exception):
    """A mistake in the user's input or options; the CLI prints it on one line and exits non-zero."""


class ManifestError(LayerlensError):
    """The manifest does not follow schema version 1."""


class AllocationError(LayerlensError):
    """An allocation file does not follow the allocation schema."""
