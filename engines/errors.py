"""Errors the engine layer raises for bad input, importable without the ML stack (for the CLI)."""

from __future__ import annotations


class WeightsError(ValueError):
    """A checkpoint could not be found, read or matched to its model."""
