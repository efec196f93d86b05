"""FreeRDP's ``xfreerdp3`` (FreeRDP 3) as a bridge runs it: its command line, its exit codes and
what they mean for the person, and the sign-in signals in its log.

FreeRDP 3 rather than 2: measured against the same xrdp, FreeRDP 2.11 took 1.3 s from its start
to the remote screen, FreeRDP 3.10 0.4 s. FreeRDP 2 steps through the connection sequence with a
fixed 100 ms sleep whenever the server's answer is not already there (about ten of them);
FreeRDP 3 does not. Both still benchmark their image routines for 0.3 s at every start.

Sign-in: without NLA a server that refuses the account does not end the connection, it shows its
own sign-in screen (xrdp: a "login failed" dialog naming the account, then its login form; Windows:
its logon screen), which must never reach the person. So the browser is admitted only after a
positive sign-in signal, read from FreeRDP's own log (selected tags at DEBUG, line-buffered):

- NLA negotiated (CredSSP checked the account before any screen) and the window is up;
- a Save Session Info PDU with a logon notification (``LogonInfoV1/V2``, ``LogonPlainNotify``:
  Windows), or the device channel's "user logged on" (rdpdr);
- the session's clipboard channel ready (cliprdr ``CB_MONITOR_READY``): xrdp's chansrv runs only
  in a signed-in session (measured with xrdp 0.9.21 over TLS: soon after the window for the right
  password, never for a wrong one).

A logon error in a Save Session Info PDU refuses at once; no signal within ``logon_timeout`` of
the window refuses too (the server shows its own sign-in screen): both as refused credentials.

FreeRDP exits 147 both for a closed port and for a refused NLA login; a TCP probe of the server
tells them apart (``start_failure``).

Behind a jump host (``RdpTarget.unix_path``): FreeRDP connects to a unix socket when the ``/v:``
host begins with "/" (libfreerdp/core/tcp.c, ``freerdp_tcp_connect``). Its certificate checks
would then use that path as the host name (a CA-issued certificate never matches it, and
trusted-on-first-use entries would follow the socket's name), so ``/cert:name:HOST`` names the
desktop's configured host instead and ``/port:`` its port: the CA policy checks the
certificate against that name, and the first-use store keeps ``HOST PORT`` as for a direct
connection. A pinned fingerprint is checked before any name (libfreerdp/crypto/tls.c). What
still sees the path: the TLS SNI (which RDP servers do not rely on) and the Kerberos service
name of NLA (TERMSRV/<path>: NLA falls back to NTLM). The socket accepts every connection and
closes it when the jump host cannot reach the server, so reachability through it is an RDP
server's answer to a connection request (``reachable``), not an accepted connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.keyboards import klid
from gateway.probe import probe_rdp, probe_rfb
from gateway.rdp.errors import (
    REASON_CERTIFICATE,
    REASON_CLOSED_AT_SIGN_IN,
    REASON_CREDENTIALS,
    REASON_ENDED,
    REASON_LOGGED_OFF,
    REASON_LOST,
    REASON_SECURITY,
    REASON_UNREACHABLE,
)
from gateway.rdp.target import RdpTarget

PROBE_TIMEOUT = 3.0

# The X selection xfreerdp keeps the remote clipboard in (not CLIPBOARD, which is Xvnc's): the
# bridge's clipboard go-between (``gateway.rdp.clipboard``) passes text between the two.
RDP_SELECTION = "DESKGATE_RDP"

XFREERDP = "xfreerdp3"  # Debian's freerdp3-x11 (Debian 12: bookworm-backports)

# FreeRDP exit codes (client/X11/xf_client.h) and the error-info codes it passes through.
_EXIT_LOGOFF_BY_USER = 12  # ERRINFO_LOGOFF_BY_USER
_EXIT_CONN_FAILED = 131
_EXIT_AUTH_FAILURE = 132
_EXIT_NEGO_FAILURE = 133
_EXIT_LOGON_FAILURE = 134
_EXIT_ACCOUNT_LOCKED_OUT = 135
_EXIT_DNS_ERROR = 139
_EXIT_DNS_NAME_NOT_FOUND = 140
_EXIT_CONNECT_FAILED = 141
_EXIT_TLS_CONNECT_FAILED = 143
_EXIT_TRANSPORT_FAILED = 147
_EXIT_PASSWORD_EXPIRED = 148
# FreeRDP 3: must change, account disabled, certainly expired, revoked, wrong password, access
# denied, account restriction, account expired, logon type not granted, no credentials.
_EXIT_CREDENTIALS_3 = (149, 151, 152, 153, 154, 155, 156, 157, 158, 159)
_CREDENTIAL_TEXT = (
    "ERRCONNECT_LOGON_FAILURE",
    "ERRCONNECT_AUTHENTICATION_FAILED",
    "ERRCONNECT_WRONG_PASSWORD",
    "ERRCONNECT_ACCOUNT_LOCKED_OUT",
    "ERRCONNECT_PASSWORD_EXPIRED",
    "ERRCONNECT_PASSWORD_CERTAINLY_EXPIRED",
    "ERRCONNECT_ACCOUNT_DISABLED",
    "ERRCONNECT_ACCOUNT_RESTRICTION",
    "STATUS_LOGON_FAILURE",
    "STATUS_WRONG_PASSWORD",
)
_CERTIFICATE_TEXT = ("certificate not trusted", "Host key verification failed", "HOST IDENTIFICATION")

# FreeRDP log tags raised to DEBUG for the sign-in signals (``/log-filters``; little output).
_LOGON_LOG_TAGS = (
    "com.freerdp.core.nego",  # "Negotiated NLA security"
    "com.freerdp.core.info",  # Save Session Info: LogonInfoV1/V2, LogonPlainNotify, LogonErrorInfo
    "com.freerdp.channels.cliprdr.client",  # "MonitorReady"
    "com.freerdp.channels.rdpdr.client",  # "... to RDPDR_CHANNEL_STATE_USER_LOGGEDON"
)
# "[14:39:56:006] [15074:00003aec] [DEBUG][com.freerdp.channels.cliprdr.client] -
#  [cliprdr_order_recv]: msgType: CB_MONITOR_READY [0x0001] (1), msgFlags: NONE|[0x0000] dataLen: 0"
_WLOG_LINE = re.compile(
    r"^\[[\d:]+\] \[\d+:[0-9a-fA-F]+\] \[(?:TRACE|DEBUG|INFO|WARN|ERROR|FATAL)\]\[(?P<tag>[\w.]+)\] - "
    r"\[(?P<function>\w+)\]: (?P<msg>.*)$"
)
# "Negotiated [HYBRID][0x00000002] security": CredSSP (NLA), also as HYBRID_EX
_NEGOTIATED_NLA = re.compile(r"^Negotiated \[[A-Z_|]*HYBRID[A-Z_|]*\]")
_MONITOR_READY = "msgType: CB_MONITOR_READY "
_LOGON_ERROR = re.compile(
    r"^LogonErrorInfo: Data: 0x(?P<data>[0-9A-Fa-f]{8}) Type: 0x(?P<type>[0-9A-Fa-f]{8})$"
)
# [MS-RDPBCGR] 2.2.10.1.1.4.1.1 ErrorNotificationType: bad password, update password, other failure
# (3, LOGON_WARNING, only offers session options: not a refusal).
_LOGON_FAILURE_TYPES = (0, 1, 2)
_RDPDR_LOGGED_ON = " to RDPDR_CHANNEL_STATE_USER_LOGGEDON"


@dataclass(eq=False)
class SignIn:
    """What FreeRDP's log said about the sign-in so far (see "Sign-in" in the module text)."""

    nla: bool = False  # CredSSP negotiated: the server checks the account before the session
    confirmed: str = ""  # which signal confirmed that the account is signed in
    refused: str = ""  # which signal refused it
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, line: str) -> None:
        m = _WLOG_LINE.match(line)
        if m is None:
            return
        tag, msg = m.group("tag"), m.group("msg").rstrip()
        if tag == "com.freerdp.core.nego" and _NEGOTIATED_NLA.match(msg):
            self.nla = True
        elif tag == "com.freerdp.core.info":
            if msg.startswith(("LogonInfoV1:", "LogonInfoV2:", "LogonPlainNotify")):
                self._confirm("logon notification")
            elif (e := _LOGON_ERROR.match(msg)) and int(e.group("type"), 16) in _LOGON_FAILURE_TYPES:
                self._refuse(f"logon error type {int(e.group('type'), 16)}, data 0x{e.group('data')}")
        elif tag == "com.freerdp.channels.cliprdr.client" and msg.startswith(_MONITOR_READY):
            self._confirm("the session's clipboard channel is ready")
        elif tag == "com.freerdp.channels.rdpdr.client" and msg.endswith(_RDPDR_LOGGED_ON):
            self._confirm("user logged on (rdpdr)")

    def _confirm(self, what: str) -> None:
        if not self.confirmed and not self.refused:
            self.confirmed = what
            self.changed.set()

    def _refuse(self, what: str) -> None:
        if not self.confirmed and not self.refused:
            self.refused = what
            self.changed.set()


def xfreerdp_argv(target: RdpTarget) -> list[str]:
    """The command line of a bridge's ``xfreerdp`` (never the password: it goes to stdin)."""
    # stdbuf: FreeRDP writes its DEBUG lines to a block-buffered stdout; the sign-in signals
    # must arrive when they happen. (stdbuf execs xfreerdp: same PID.)
    argv = ["stdbuf", "-oL", "-eL", XFREERDP, target.server_argument(), f"/u:{target.username}"]
    if target.domain:
        argv.append(f"/d:{target.domain}")
    # The browser sends scancodes; the server maps them with this layout (not the bridge's).
    argv += ["/f", "/dynamic-resolution", "/bpp:24", f"/kbd:layout:{klid(target.keyboard_layout)}"]
    # Text only over the clipboard: the gateway carries no files (FreeRDP 3 would offer them).
    argv.append(f"/clipboard:use-selection:{RDP_SELECTION},files-to:off")
    argv.append("/log-filters:" + ",".join(f"{tag}:DEBUG" for tag in _LOGON_LOG_TAGS))
    if target.security != "negotiate":
        argv.append(f"/sec:{target.security}")
    # Through a jump host's socket: the desktop's host name and port are what its certificate
    # is checked and remembered against (see the module text).
    name = f",name:{target.host.strip('[]')}" if target.unix_path else ""
    if target.unix_path:
        argv.append(f"/port:{target.port}")
    if target.cert_policy == "ignore":
        argv.append("/cert:ignore")
    elif target.cert_policy == "ca":
        argv.append(f"/cert:deny{name}")  # trusted: issued by cert_ca for this host name, else refused
    elif target.cert_policy == "tofu":
        argv.append(f"/cert:tofu,deny{name}")  # deny: a changed certificate ends it, no prompt
    else:
        fp = target.normalized_fingerprint
        pairs = ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))
        argv.append(f"/cert:deny,fingerprint:sha256:{pairs}{name}")
    if target.password is not None:
        argv.append("/from-stdin:force")
    return argv


async def start_failure(code: int, output: Sequence[str], target: RdpTarget,
                        nla: bool) -> tuple[str, str, bool | None]:
    """Why an ``xfreerdp`` exited ``code`` before connecting: (reason for the person, kind for
    ``BridgeError.of``, whether the server's port was open when that had to be asked)."""
    text = "\n".join(output)
    reachable: bool | None = None
    if any(t in text for t in _CERTIFICATE_TEXT):
        return REASON_CERTIFICATE, "certificate", reachable
    if code in (
        _EXIT_AUTH_FAILURE, _EXIT_LOGON_FAILURE, _EXIT_ACCOUNT_LOCKED_OUT, _EXIT_PASSWORD_EXPIRED,
        *_EXIT_CREDENTIALS_3,
    ) or any(t in text for t in _CREDENTIAL_TEXT):
        return REASON_CREDENTIALS, "credentials", reachable
    if code in (_EXIT_DNS_ERROR, _EXIT_DNS_NAME_NOT_FOUND):
        return REASON_UNREACHABLE, "unreachable", reachable
    if code in (_EXIT_TRANSPORT_FAILED, _EXIT_CONN_FAILED, _EXIT_CONNECT_FAILED):
        # FreeRDP says the same for a closed port and a refused NLA login; without NLA
        # an open port that dropped the connection has not refused the account.
        reachable = await server_reachable(target)
        if not reachable:
            return REASON_UNREACHABLE, "unreachable", reachable
        if nla or target.security == "nla":
            return REASON_CREDENTIALS, "credentials", reachable
        return REASON_CLOSED_AT_SIGN_IN, "failed", reachable
    if code in (_EXIT_TLS_CONNECT_FAILED, _EXIT_NEGO_FAILURE):
        return REASON_SECURITY, "security", reachable
    return f"the remote desktop connection failed (code {code})", "failed", reachable


def exit_reason(code: int) -> str:
    """Why an xfreerdp that was connected ended, for the person."""
    if code == _EXIT_LOGOFF_BY_USER:
        return REASON_LOGGED_OFF
    if code in (_EXIT_CONN_FAILED, _EXIT_TRANSPORT_FAILED):
        return REASON_LOST
    return REASON_ENDED


async def tcp_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when a TCP connection to host:port opens within ``timeout``."""
    return await probe_rfb(host=host.strip("[]"), port=port, timeout=timeout, banner_required=False)


async def server_reachable(target: RdpTarget, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when the target's server is there: a TCP connection opens, or, through a jump
    host's socket, an RDP server answers a connection request (see the module text)."""
    if target.unix_path:
        return await probe_rdp(target.unix_path, timeout=timeout)
    return await tcp_reachable(target.host, target.port, timeout)


def output_line(raw: bytes) -> str:
    """One line of xfreerdp's output as kept and logged: its own prompts stripped."""
    line = raw.decode(errors="replace").rstrip()
    return line.removeprefix("Password: ").removeprefix("Domain: ")
