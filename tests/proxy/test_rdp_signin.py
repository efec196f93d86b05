"""The RDP bridge's sign-in signals, read from FreeRDP 3's log lines.

The xrdp and FreeRDP-shadow lines were recorded from the real servers of tests/rdp_servers.py
(xfreerdp3 3.10 with the bridge's ``/log-filters``); the Windows ones (Save Session Info PDUs)
follow FreeRDP's format strings in libfreerdp3 (``LogonInfoV2: SessionId: 0x%08X UserName: [%s]
Domain: [%s]``, ``LogonErrorInfo: Data: 0x%08X Type: 0x%08X``), with the function name wlog
puts before each message. No server runs here (a jump host's socket is played by unix sockets
of the test's own).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.probe import RDP_CONNECTION_REQUEST, probe_rdp
from gateway.rdp.freerdp import SignIn, xfreerdp_argv
from gateway.rdp.target import RdpTarget

P = "[14:39:56:006] [15074:00003aec] "
NEGO = P + "[DEBUG][com.freerdp.core.nego] - [nego_connect]: "
CLIPRDR = P + "[DEBUG][com.freerdp.channels.cliprdr.client] - [cliprdr_order_recv]: "
MONITOR_READY = "msgType: CB_MONITOR_READY [0x0001] (1), msgFlags: NONE|[0x0000] dataLen: 0"
TLS = "Negotiated [SSL][0x00000001] security"


def info(function: str, msg: str) -> str:
    return P + f"[DEBUG][com.freerdp.core.info] - [{function}]: {msg}"


def read(*lines: str) -> SignIn:
    s = SignIn()
    for line in lines:
        s.note(line)
    return s


def test_xrdp_session_clipboard_confirms() -> None:
    s = read(NEGO + TLS,
             CLIPRDR + "msgType: CB_CLIP_CAPS [0x0007] (7), msgFlags: NONE|[0x0000] dataLen: 16",
             CLIPRDR + MONITOR_READY)
    assert (s.nla, s.confirmed, s.refused) == (False, "the session's clipboard channel is ready", "")
    assert s.changed.is_set()


def test_xrdp_login_dialog_says_nothing() -> None:
    """What xfreerdp printed while xrdp showed "login failed": no signal at all."""
    s = read(NEGO + TLS,
             info("rdp_write_info_packet", "Client Info Packet Flags = INFO_MOUSE|INFO_AUTOLOGON"),
             P + "[INFO][com.freerdp.gdi] - [gdi_init_primary]: Local framebuffer format "
                 " PIXEL_FORMAT_BGRX32",
             P + "[INFO][com.freerdp.channels.rdpsnd.client] - [rdpsnd_load_device_plugin]: [static] Loaded "
                 "fake backend for rdpsnd")  # fmt: skip
    assert (s.nla, s.confirmed, s.refused) == (False, "", "")
    assert not s.changed.is_set()


@pytest.mark.parametrize("protocols", ["HYBRID", "HYBRID_EX", "SSL|HYBRID"])
def test_nla_is_noted(protocols: str) -> None:
    assert read(NEGO + f"Negotiated [{protocols}][0x00000002] security").nla
    assert not read(NEGO + TLS).nla


@pytest.mark.parametrize("line", [
    info("rdp_recv_logon_info_v2", "LogonInfoV2: SessionId: 0x00000002 UserName: [alice] Domain: [CORP]"),
    info("rdp_recv_logon_info_v1", "LogonInfoV1: SessionId: 0x00000002 UserName: [alice] Domain: [CORP]"),
    info("rdp_recv_logon_plain_notify", "LogonPlainNotify"),
    P + "[DEBUG][com.freerdp.channels.rdpdr.client] - [rdpdr_state_advance]: [RDPDR] transition from "
        "RDPDR_CHANNEL_STATE_READY to RDPDR_CHANNEL_STATE_USER_LOGGEDON",
])
def test_windows_logon_notifications_confirm(line: str) -> None:
    assert read(line).confirmed


@pytest.mark.parametrize("kind,refused", [(0, True), (1, True), (2, True), (3, False)])
def test_logon_errors_refuse_but_warnings_do_not(kind: int, refused: bool) -> None:
    s = read(info("rdp_recv_logon_error_info", f"LogonErrorInfo: Data: 0xFFFFFFFE Type: 0x{kind:08X}"))
    assert bool(s.refused) is refused and not s.confirmed


def test_the_first_verdict_stands() -> None:
    refused_first = read(
        info("rdp_recv_logon_error_info", "LogonErrorInfo: Data: 0x00000000 Type: 0x00000000"),
        CLIPRDR + MONITOR_READY,
    )
    assert refused_first.refused and not refused_first.confirmed


@pytest.mark.parametrize("line", [
    # a signal's words elsewhere in a line (say, a user name a server sends back) are not a signal
    info("rdp_recv_logon_info_v2", "LogonInfoV2: SessionId: 0x1 UserName: [x] " + CLIPRDR + MONITOR_READY),
    "[cliprdr_order_recv]: " + MONITOR_READY,
    "Password: " + CLIPRDR + MONITOR_READY,
    P + "[DEBUG][com.freerdp.channels.rdpsnd.client] - [cliprdr_order_recv]: " + MONITOR_READY,
    CLIPRDR + "msgType: CB_MONITOR_READYX",
    P + "[DEBUG][com.freerdp.channels.cliprdr.client] - " + MONITOR_READY,
])
def test_only_a_whole_line_of_the_right_tag_counts(line: str) -> None:
    s = read(line)
    assert s.confirmed in ("", "logon notification"), s.confirmed
    assert s.confirmed != "the session's clipboard channel is ready"


def test_xfreerdp_runs_line_buffered_with_the_sign_in_tags() -> None:
    argv = xfreerdp_argv(RdpTarget("127.0.0.1", 3389, "alice"))
    assert argv[:4] == ["stdbuf", "-oL", "-eL", "xfreerdp3"]
    assert "/kbd:layout:0x00000409" in argv and "/clipboard:use-selection:DESKGATE_RDP,files-to:off" in argv
    [filters] = [a for a in argv if a.startswith("/log-filters:")]
    assert filters == ("/log-filters:com.freerdp.core.nego:DEBUG,com.freerdp.core.info:DEBUG,"
                       "com.freerdp.channels.cliprdr.client:DEBUG,com.freerdp.channels.rdpdr.client:DEBUG")


def test_behind_a_jump_host_xfreerdp_opens_its_socket_and_checks_the_desktops_name() -> None:
    """Through a jump host's socket: ``/v:`` is the socket, ``/port:`` and ``/cert:...name:`` the
    desktop's own port and host, which the certificate is checked and remembered against."""
    sock = "/run/deskgate/ssh-998/bastion-1-1.sock"
    fp = "ab" * 32
    pairs = ":".join(["ab"] * 32)
    for policy, extra, cert in (
        ("fingerprint", {"cert_fingerprint": fp}, f"/cert:deny,fingerprint:sha256:{pairs},name:win.corp"),
        ("ca", {"cert_ca": "-----BEGIN CERTIFICATE-----"}, "/cert:deny,name:win.corp"),
        ("tofu", {}, "/cert:tofu,deny,name:win.corp"),
        ("ignore", {}, "/cert:ignore"),
    ):
        argv = xfreerdp_argv(RdpTarget("win.corp", 3390, "alice", cert_policy=policy, unix_path=sock,
                                       **extra))  # type: ignore[arg-type]
        assert argv[4:6] == [f"/v:{sock}", "/u:alice"]
        assert "/port:3390" in argv
        assert [a for a in argv if a.startswith("/cert:")] == [cert]
    # A direct target keeps host:port in /v: and no name of its own.
    argv = xfreerdp_argv(RdpTarget("win.corp", 3390, "alice", cert_policy="tofu"))
    assert "/v:win.corp:3390" in argv and "/cert:tofu,deny" in argv
    assert not [a for a in argv if a.startswith("/port:")]


@pytest.mark.parametrize("path", ["relative.sock", "/tmp/a:b.sock", "/tmp/x,name:evil.sock",
                                  "/tmp/" + "x" * 120])
def test_a_socket_path_freerdp_would_read_otherwise_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="unix_path"):
        RdpTarget("win.corp", 3389, "alice", unix_path=path)


async def test_probe_rdp_needs_an_rdp_answer_not_an_accepted_connection(tmp_path: Path) -> None:
    """A jump host's socket accepts every connection; one it cannot forward is closed."""
    seen: list[bytes] = []

    async def rdp_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(len(RDP_CONNECTION_REQUEST)))
        writer.write(bytes.fromhex("030000130ed000001234000201080001000000"))  # a Confirm
        await writer.drain()
        writer.close()

    async def closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    servers = [await asyncio.start_unix_server(handler, str(tmp_path / f"{name}.sock"))
               for name, handler in (("rdp", rdp_server), ("closed", closed), ("silent", silent))]
    try:
        assert await probe_rdp(tmp_path / "rdp.sock", timeout=2)
        assert seen == [RDP_CONNECTION_REQUEST]
        assert not await probe_rdp(tmp_path / "closed.sock", timeout=2)
        assert not await probe_rdp(tmp_path / "silent.sock", timeout=0.3)
        assert not await probe_rdp(tmp_path / "none.sock", timeout=2)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
