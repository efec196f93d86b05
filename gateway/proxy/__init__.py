"""The byte path between a browser channel and a desktop. No HTTP handlers, no database."""

from gateway.proxy.tunnel import ClientChannel, relay_vnc

__all__ = ["ClientChannel", "relay_vnc"]
