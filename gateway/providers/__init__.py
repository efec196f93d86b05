"""Desktop providers, chosen by name (see ``PROVIDERS``)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import ConfigError
from gateway.providers.base import DesktopProvider, DesktopSpec, ProviderContext
from gateway.providers.libvirt.provider import LibvirtProvider
from gateway.providers.local import LocalProvider
from gateway.providers.ssh import SshProvider
from gateway.providers.static import StaticProvider

__all__ = ["PROVIDERS", "DesktopProvider", "DesktopSpec", "ProviderContext", "make_provider"]

PROVIDERS: dict[str, Callable[[ProviderContext], DesktopProvider]] = {
    "static": StaticProvider,
    "local": LocalProvider,
    "libvirt": LibvirtProvider,
    "ssh": SshProvider,
}


def make_provider(name: str, ctx: ProviderContext) -> DesktopProvider:
    """The provider called ``name``; ``ConfigError`` for an unknown name."""
    try:
        factory = PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(f"unknown desktop provider {name!r} (known: {known})") from None
    return factory(ctx)
