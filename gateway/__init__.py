"""Deskgate: a browser-based desktop access gateway."""

__version__ = "0.1.0"
