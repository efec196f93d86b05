"""Fixtures for the auth tests: ``hostile_idp``, a controllable OpenID Connect provider."""

from __future__ import annotations

from hostile_idp import hostile_idp

__all__ = ["hostile_idp"]
