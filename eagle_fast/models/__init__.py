"""Draft models beyond the single head: EAGLE-1/2 and EAGLE-3 (:class:`EagleDrafter`)."""

from __future__ import annotations

from .eagle import EagleConfig, EagleDrafter

__all__ = ["EagleDrafter", "EagleConfig"]
