"""Is a desktop server there? One connection, closed at once: an RFB banner, or a TCP connect;
through a socket that accepts every connection (a jump host's forward), an RDP server's answer.

Used by the providers (a desktop's state), the X displays (a display answers) and the RDP
bridges (an unreachable server told apart from a refused account).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

RFB_BANNER_PREFIX = b"RFB 003."
RFB_BANNER_LEN = 12
# An X.224 Connection Request in a TPKT ([MS-RDPBCGR] 2.2.1.1) with an RDP Negotiation Request
# for TLS and CredSSP: every RDP server answers it (a Connection Confirm) before any sign-in.
RDP_CONNECTION_REQUEST = bytes.fromhex("030000130ee000000000000100080003000000")


async def probe_rfb(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    unix_path: str | Path | None = None,
    timeout: float = 5.0,
    banner_required: bool = True,
) -> bool:
    """True when the server accepts a connection and (if required) sends an RFB 3.x banner.

    The connection is closed right after the banner: no security handshake is attempted, so
    a probe never counts as a failed login. Bounded by ``timeout`` seconds in total.
    """

    async def attempt() -> bool:
        if unix_path is not None:
            reader, writer = await asyncio.open_unix_connection(str(unix_path))
        else:
            reader, writer = await asyncio.open_connection(host, port)
        try:
            if not banner_required:
                return True
            banner = await reader.readexactly(RFB_BANNER_LEN)
            return banner.startswith(RFB_BANNER_PREFIX) and banner.endswith(b"\n")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    try:
        return await asyncio.wait_for(attempt(), timeout)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False


async def probe_rdp(unix_path: str | Path, *, timeout: float = 5.0) -> bool:
    """True when an RDP server answers a connection request sent to ``unix_path`` within
    ``timeout``: a forward that cannot reach its server closes the connection instead. Nothing
    is signed in to, and the connection is closed after the first bytes of the answer."""

    async def attempt() -> bool:
        reader, writer = await asyncio.open_unix_connection(str(unix_path))
        try:
            writer.write(RDP_CONNECTION_REQUEST)
            await writer.drain()
            return (await reader.read(1)) == b"\x03"  # a TPKT's version
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    try:
        return await asyncio.wait_for(attempt(), timeout)
    except (OSError, TimeoutError):
        return False
