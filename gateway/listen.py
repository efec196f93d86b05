"""Listening sockets, bound before anything claims to listen.

Binding first lets a busy or forbidden address be one clear line naming the setting to change
(instead of a traceback after a log line that already said "listening on"), and lets the log say
"listening on" only once it is true.
"""

from __future__ import annotations

import contextlib
import os
import socket

from .errors import ConfigError


def address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, *, port_setting: str, host_setting: str) -> list[socket.socket]:
    """Listening TCP sockets on every address ``host`` resolves to (as aiohttp would bind).

    ``ConfigError`` naming ``host:port`` and the setting to change (``host_setting`` when the
    name does not resolve, ``port_setting`` when an address cannot be bound: in use, or a
    privileged port); nothing stays bound then.
    """
    where = address(host, port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {where} ({host_setting}): the address does not resolve"
                          f" ({exc})") from None
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in dict.fromkeys((i[0], i[4]) for i in infos):
            try:
                sock = socket.create_server(sockaddr, family=family, backlog=128)
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(f"cannot listen on {where} ({port_setting}): {why}") from None
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return sockets
