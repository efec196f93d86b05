"""X displays on this host: TigerVNC ``Xvnc`` servers and the programs started on them.

- ``xvnc``: start, watch and stop a display (``start_display``, ``XvncDisplay``) and run X
  clients on it (``spawn_on_display``, ``x_client_output``, ``visible_window``);
- ``numbers``: the machine's display numbers, lock files and sockets;
- ``files``: private files, VNC password files and Xauthority cookies;
- ``sysuser``: the unprivileged system user the processes run as;
- ``procs``: processes known by identity (PID and start time), started detached and stopped.

Used by the local provider (``gateway.providers.local``), the RDP bridges (``gateway.rdp``) and
test fixtures. Nothing here knows about desktops, sessions or the web.
"""

from __future__ import annotations

from gateway.errors import DesktopUnavailable


class XvncStartError(DesktopUnavailable):
    """The display did not come up; ``reason`` says which step failed (never a password)."""

    reason = "the desktop could not be started"
