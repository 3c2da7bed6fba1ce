"""Errors a user can cause and fix. The CLI prints them without a traceback, with what to do next."""

from __future__ import annotations


class UserError(RuntimeError):
    """Something in the user's input or environment must change (missing model, bad data file, full disk)."""
