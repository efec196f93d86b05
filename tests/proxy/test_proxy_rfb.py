"""The RFB state machines, fed byte streams split in every possible way. No sockets."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from gateway.errors import DesktopUnavailable, ProtocolError, UpstreamAuthFailed
from gateway.model import RelayPolicy, Secret
from gateway.proxy.rfb import BrowserHandshake, DesktopHandshake, DesktopStep, vnc_auth_response
from gateway.proxy.rfb_messages import EXTENDED_MOUSE_BUTTONS, ClientMessage, ClientMessageParser

CHALLENGE = bytes(range(16))
PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_INIT = struct.pack(">HH", 800, 600) + PIXEL_FORMAT + struct.pack(">I", 8) + b"my desk!"


def splits(stream: bytes) -> Iterator[list[bytes]]:
    """The stream whole, cut in two at every offset, and one byte at a time."""
    yield [stream]
    for i in range(1, len(stream)):
        yield [stream[:i], stream[i:]]
    yield [stream[i : i + 1] for i in range(len(stream))]


def reason(text: bytes) -> bytes:
    return struct.pack(">I", len(text)) + text


# --- VncAuth --------------------------------------------------------------------------------
# Vectors computed independently with OpenSSL: the key is the password zero-padded to 8 bytes
# with each byte's bits reversed, e.g. for "secret42":
#   printf '\x00\x01...\x0f' | openssl enc -des-ecb -provider legacy -provider default \
#       -K cea6c64ea62e2c4c -nopad
@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("secret42", "c6e31ed26154432307b32f3f00a3e6a1"),
        ("secret42-and-more", "c6e31ed26154432307b32f3f00a3e6a1"),  # truncated to 8 bytes
        ("pw", "858600d9af143c9e6541d3dd92a835d0"),  # zero-padded
    ],
)
def test_vnc_auth_response_matches_known_vectors(password: str, expected: str) -> None:
    assert vnc_auth_response(Secret(password), CHALLENGE).hex() == expected


def test_vnc_auth_rejects_a_short_challenge() -> None:
    with pytest.raises(ValueError):
        vnc_auth_response(Secret("pw"), b"short")


# --- the desktop side -------------------------------------------------------------------------
def run_desktop(machine: DesktopHandshake, chunks: list[bytes]) -> bytes:
    """Feed the chunks; send ClientInit as soon as the machine is authenticated."""
    out = bytearray()
    for chunk in chunks:
        out += machine.feed(chunk)
        if machine.step is DesktopStep.AUTHENTICATED:
            out += machine.client_init()
            out += machine.feed(b"")
    return bytes(out)


VNCAUTH_RESPONSE = vnc_auth_response(Secret("secret42"), CHALLENGE)
# (server stream, expected client output, password) for every version and security type
DESKTOP_CASES = {
    "3.8 none": (
        b"RFB 003.008\n" + b"\x01\x01" + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.008\n" + b"\x01" + b"\x01",
        None,
    ),
    "3.8 vncauth": (
        b"RFB 003.008\n" + b"\x02\x02\x10" + CHALLENGE + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.008\n" + b"\x02" + VNCAUTH_RESPONSE + b"\x01",
        "secret42",
    ),
    "3.8 prefers none": (
        b"RFB 003.008\n" + b"\x03\x10\x02\x01" + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.008\n" + b"\x01" + b"\x01",
        "secret42",
    ),
    "3.7 none": (
        b"RFB 003.007\n" + b"\x01\x01" + SERVER_INIT,
        b"RFB 003.007\n" + b"\x01" + b"\x01",
        None,
    ),
    "3.7 vncauth": (
        b"RFB 003.007\n" + b"\x01\x02" + CHALLENGE + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.007\n" + b"\x02" + VNCAUTH_RESPONSE + b"\x01",
        "secret42",
    ),
    "3.3 none": (
        b"RFB 003.003\n" + b"\0\0\0\x01" + SERVER_INIT,
        b"RFB 003.003\n" + b"\x01",
        None,
    ),
    "3.3 vncauth": (
        b"RFB 003.003\n" + b"\0\0\0\x02" + CHALLENGE + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.003\n" + VNCAUTH_RESPONSE + b"\x01",
        "secret42",
    ),
    "3.889 is 3.8": (
        b"RFB 003.889\n" + b"\x01\x01" + b"\0\0\0\0" + SERVER_INIT,
        b"RFB 003.008\n" + b"\x01" + b"\x01",
        None,
    ),
    "3.5 is 3.3": (
        b"RFB 003.005\n" + b"\0\0\0\x01" + SERVER_INIT,
        b"RFB 003.003\n" + b"\x01",
        None,
    ),
}


@pytest.mark.parametrize("case", DESKTOP_CASES)
def test_desktop_handshake_at_every_split(case: str) -> None:
    stream, expected, password = DESKTOP_CASES[case]
    trailing = b"\x00\x00\x00\x01"  # the start of a FramebufferUpdate that came with ServerInit
    for chunks in splits(stream + trailing):
        machine = DesktopHandshake(Secret(password) if password else None)
        assert run_desktop(machine, chunks) == expected
        assert machine.done
        assert machine.server_init is not None
        assert (machine.server_init.width, machine.server_init.height) == (800, 600)
        assert machine.server_init.name == "my desk!"
        assert machine.server_init.raw == SERVER_INIT
        assert machine.remainder() == trailing


def test_desktop_waits_for_client_init_before_reading_server_init() -> None:
    machine = DesktopHandshake(None)
    assert machine.feed(b"RFB 003.008\n\x01\x01\0\0\0\0" + SERVER_INIT) == b"RFB 003.008\n\x01"
    assert machine.authenticated and not machine.done
    assert machine.client_init() == b"\x01"
    assert machine.feed(b"") == b""
    assert machine.done


@pytest.mark.parametrize(
    "version",
    [b"HTTP/1.1 200\n", b"SSH-2.0-Open", b"RFB 004.000\n", b"RFB 003.002\n", b"RFB 3.8\n\n\n\n\n"],
)
def test_desktop_malformed_or_unsupported_version(version: bytes) -> None:
    with pytest.raises(ProtocolError):
        DesktopHandshake(None).feed(version)


def test_desktop_offers_only_unknown_security_types() -> None:
    with pytest.raises(UpstreamAuthFailed, match=r"no supported security type \(\[16, 19\]\)"):
        DesktopHandshake(Secret("pw")).feed(b"RFB 003.008\n\x02\x10\x13")


def test_desktop_needs_a_password_we_do_not_have() -> None:
    for password in (None, Secret("")):
        with pytest.raises(UpstreamAuthFailed, match="needs a password"):
            DesktopHandshake(password).feed(b"RFB 003.008\n\x01\x02")
    with pytest.raises(UpstreamAuthFailed, match="needs a password"):
        DesktopHandshake(None).feed(b"RFB 003.003\n\0\0\0\x02")


def test_desktop_refuses_the_connection_with_a_reason() -> None:
    stream = b"RFB 003.008\n\x00" + reason(b"Too many security failures")
    for chunks in splits(stream):
        machine = DesktopHandshake(None)
        with pytest.raises(UpstreamAuthFailed, match="refused the connection: Too many security"):
            run_desktop(machine, chunks)
    with pytest.raises(UpstreamAuthFailed, match="refused the connection: go away"):
        DesktopHandshake(None).feed(b"RFB 003.003\n\0\0\0\0" + reason(b"go away"))


def test_desktop_security_failure_with_reason() -> None:
    stream = b"RFB 003.008\n\x01\x02" + CHALLENGE + b"\0\0\0\x01" + reason(b"Authentication failure")
    for chunks in splits(stream):
        machine = DesktopHandshake(Secret("wrong"))
        with pytest.raises(UpstreamAuthFailed) as caught:
            run_desktop(machine, chunks)
        assert caught.value.reason == (
            "the desktop refused the gateway's credentials: Authentication failure"
        )


def test_desktop_security_failure_reason_is_cleaned() -> None:
    stream = b"RFB 003.008\n\x01\x02" + CHALLENGE + b"\0\0\0\x01" + reason(b"bad\x1b[31m\npw")
    with pytest.raises(UpstreamAuthFailed) as caught:
        DesktopHandshake(Secret("wrong")).feed(stream)
    assert "\x1b" not in caught.value.reason and "\n" not in caught.value.reason


def test_desktop_security_failure_before_38_has_no_reason() -> None:
    stream = b"RFB 003.007\n\x01\x02" + CHALLENGE + b"\0\0\0\x01"
    with pytest.raises(UpstreamAuthFailed) as caught:
        DesktopHandshake(Secret("wrong")).feed(stream)
    assert caught.value.reason == UpstreamAuthFailed.reason


def test_desktop_oversized_reason_is_not_read() -> None:
    with pytest.raises(UpstreamAuthFailed, match="not shown"):
        DesktopHandshake(None).feed(b"RFB 003.008\n\x00" + struct.pack(">I", 1 << 30))


def test_desktop_unsupported_33_security_type() -> None:
    with pytest.raises(UpstreamAuthFailed, match="unsupported security type 16"):
        DesktopHandshake(None).feed(b"RFB 003.003\n\0\0\0\x10")


def test_desktop_eof_error_depends_on_the_step() -> None:
    machine = DesktopHandshake(Secret("pw"))
    assert isinstance(machine.eof_error(), DesktopUnavailable)
    machine.feed(b"RFB 003.007\n\x01\x02" + CHALLENGE)
    assert machine.step is DesktopStep.SECURITY_RESULT
    assert isinstance(machine.eof_error(), UpstreamAuthFailed)


def test_desktop_server_init_limits() -> None:
    def server_init(name_length: int, bpp: int = 32) -> bytes:
        pixel_format = bytes([bpp]) + PIXEL_FORMAT[1:]
        return b"\x03\x20\x02\x58" + pixel_format + struct.pack(">I", name_length)

    for bad in (server_init(4097), server_init(4, bpp=24)):
        machine = DesktopHandshake(None)
        run_desktop(machine, [b"RFB 003.008\n\x01\x01\0\0\0\0"])
        with pytest.raises(ProtocolError):
            machine.feed(bad)


def test_desktop_client_init_only_when_authenticated() -> None:
    with pytest.raises(RuntimeError):
        DesktopHandshake(None).client_init()


# --- the browser side -------------------------------------------------------------------------
BROWSER_CASES = {
    "3.8": (b"RFB 003.008\n\x01\x01", b"\x01\x01\0\0\0\0"),
    "3.7": (b"RFB 003.007\n\x01\x01", b"\x01\x01"),
    "3.3": (b"RFB 003.003\n\x01", b"\0\0\0\x01"),
}


@pytest.mark.parametrize("case", BROWSER_CASES)
def test_browser_handshake_at_every_split(case: str) -> None:
    stream, expected = BROWSER_CASES[case]
    first_messages = b"\x03\x00\x00\x00\x00\x00\x03\x20\x02\x58"  # a FramebufferUpdateRequest
    for chunks in splits(stream + first_messages):
        machine = BrowserHandshake()
        out = b"".join(machine.feed(chunk) for chunk in chunks)
        assert out == expected
        assert machine.done and machine.shared
        assert machine.remainder() == first_messages


def test_browser_greeting_is_38() -> None:
    assert BrowserHandshake.GREETING == b"RFB 003.008\n"


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "does not speak RFB"),
        (b"RFB 003.889\n", "asked for RFB 3.889"),
        (b"RFB 003.005\n", "asked for RFB 3.5"),
        (b"RFB 003.008\n\x02", r"chose security type 2, not None \(1\)"),
        (b"RFB 003.007\n\x10", "chose security type 16"),
    ],
)
def test_browser_garbage_during_handshake(stream: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        BrowserHandshake().feed(stream)


# --- client messages --------------------------------------------------------------------------
def cut_text(text: bytes) -> bytes:
    return b"\x06\0\0\0" + struct.pack(">I", len(text)) + text


def extended_cut_text(action: int, payload: bytes = b"") -> bytes:
    body = struct.pack(">I", action | 1) + payload  # format bit 0: text
    return b"\x06\0\0\0" + struct.pack(">i", -len(body)) + body


CAPS, REQUEST, PEEK, NOTIFY, PROVIDE = (1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28)

# What noVNC 1.7 sends (core/rfb.js RFB.messages), one of each, and a few more.
MESSAGES = {
    "SetPixelFormat": b"\x00\0\0\0" + PIXEL_FORMAT,
    "SetEncodings": b"\x02\x00\x00\x03" + struct.pack(">3i", 7, 0, -223),
    "FramebufferUpdateRequest": b"\x03\x01\x00\x00\x00\x00\x03\x20\x02\x58",
    "KeyEvent": b"\x04\x01\x00\x00\x00\x00\xff\x0d",
    "PointerEvent": b"\x05\x01\x00\x10\x00\x20",
    "ClientCutText": cut_text(b"hello"),
    "ClientCutText empty": cut_text(b""),
    "ExtendedClipboard caps": extended_cut_text(CAPS | REQUEST | PEEK | NOTIFY | PROVIDE, bytes(4)),
    "ExtendedClipboard request": extended_cut_text(REQUEST),
    "ExtendedClipboard notify": extended_cut_text(NOTIFY),
    "ExtendedClipboard provide": extended_cut_text(PROVIDE, b"x\x9c" + bytes(20)),
    "EnableContinuousUpdates": b"\x96\x01\x00\x00\x00\x00\x03\x20\x02\x58",
    "ClientFence": b"\xf8\0\0\0\x80\x00\x00\x03\x04abcd",
    "ClientFence empty": b"\xf8\0\0\0\x00\x00\x00\x00\x00",
    "xvp": b"\xfa\x00\x01\x02",
    "SetDesktopSize": b"\xfb\x00\x04\x00\x03\x00\x01\x00" + struct.pack(">IHHHHI", 0, 0, 0, 1024, 768, 0),
    "QEMU extended key": b"\xff\x00\x00\x01\x00\x00\x00\x61\x00\x00\x00\x1e",
    "QEMU audio enable": b"\xff\x01\x00\x00",
    "QEMU audio format": b"\xff\x01\x00\x02\x03\x02\x00\x00\xac\x44",
}
STREAM = b"".join(MESSAGES.values())


def parse(chunks: list[bytes], policy: RelayPolicy | None = None) -> list[ClientMessage]:
    parser = ClientMessageParser(policy or RelayPolicy())
    return [message for chunk in chunks for message in parser.feed(chunk)]


def test_client_messages_at_every_split() -> None:
    expected = parse([STREAM])
    assert [m.data for m in expected] == list(MESSAGES.values())
    assert all(m.forward for m in expected)
    for chunks in splits(STREAM):
        assert parse(chunks) == expected


def test_client_message_kinds_and_input_flags() -> None:
    messages = parse([STREAM])
    assert [m.type for m in messages] == [0, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 150, 248, 248, 250,
                                          251, 255, 255, 255]  # fmt: skip
    inputs = {name for name, m in zip(MESSAGES, messages, strict=True) if m.is_input}
    assert inputs == {"KeyEvent", "PointerEvent", "QEMU extended key"}


def test_incomplete_message_waits_for_more() -> None:
    parser = ClientMessageParser(RelayPolicy())
    assert parser.feed(MESSAGES["KeyEvent"][:7]) == []
    assert [m.type for m in parser.feed(MESSAGES["KeyEvent"][7:])] == [4]


def drops(policy: RelayPolicy) -> set[str]:
    messages = parse([STREAM], policy)
    return {name for name, m in zip(MESSAGES, messages, strict=True) if not m.forward}


def test_view_only_drops_input_clipboard_and_resizing() -> None:
    assert drops(RelayPolicy(view_only=True)) == {
        "KeyEvent",
        "PointerEvent",
        "QEMU extended key",
        "ClientCutText",
        "ClientCutText empty",
        "ExtendedClipboard notify",
        "ExtendedClipboard provide",
        "SetDesktopSize",
        "xvp",
    }


def test_clipboard_off_drops_text_to_the_desktop_but_not_requests_for_its_clipboard() -> None:
    assert drops(RelayPolicy(clipboard_to_desktop=False)) == {
        "ClientCutText",
        "ClientCutText empty",
        "ExtendedClipboard notify",
        "ExtendedClipboard provide",
    }


def test_default_policy_drops_nothing() -> None:
    assert drops(RelayPolicy()) == set()


def test_set_encodings_loses_extended_mouse_buttons() -> None:
    encodings = (7, EXTENDED_MOUSE_BUTTONS, -223, EXTENDED_MOUSE_BUTTONS, 0)
    raw = b"\x02\x00" + struct.pack(">H5i", 5, *encodings)
    (message,) = parse([raw])
    assert message.data == b"\x02\x00" + struct.pack(">H3i", 3, 7, -223, 0)
    # and the PointerEvent that follows is still framed as 6 bytes
    pointer_with_marker = b"\x05\x81\x00\x10\x00\x20"
    assert [m.data for m in parse([raw + pointer_with_marker + MESSAGES["KeyEvent"]])][1:] == [
        pointer_with_marker,
        MESSAGES["KeyEvent"],
    ]


BAD: dict[str, tuple[bytes, str]] = {
    "unknown type": (b"\x4d", "unknown RFB client message type 77"),
    "unknown type after a good one": (MESSAGES["KeyEvent"] + b"\x07", "message type 7"),
    "oversized cut text": (b"\x06\0\0\0" + struct.pack(">I", 1001), "ClientCutText of 1001 bytes"),
    "oversized extended cut text": (b"\x06\0\0\0" + struct.pack(">i", -1001), "of 1001 bytes"),
    "extended cut text without flags": (b"\x06\0\0\0" + struct.pack(">i", -3), "has no flags"),
    "huge negative cut text": (b"\x06\0\0\0\x80\0\0\0", "ClientCutText of 2147483648 bytes"),
    "too many encodings": (b"\x02\x00" + struct.pack(">H", 513), "SetEncodings with 513"),
    "too many screens": (b"\xfb\x00\x04\x00\x03\x00\x11\x00", "SetDesktopSize with 17 screens"),
    "fence too long": (b"\xf8\0\0\0\0\0\0\0\x41", "ClientFence payload of 65 bytes"),
    "unknown QEMU subtype": (b"\xff\x02", "unknown QEMU client message subtype 2"),
    "unknown QEMU audio operation": (b"\xff\x01\x00\x03", "unknown QEMU audio operation 3"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_client_messages_fail_on_their_header(case: str) -> None:
    header, message = BAD[case]
    policy = RelayPolicy(max_clipboard_bytes=1000)
    # the header alone is enough: nothing of the payload is waited for, or buffered
    with pytest.raises(ProtocolError, match=message):
        parse([header], policy)
    with pytest.raises(ProtocolError, match=message):
        parse([header + bytes(100)], policy)


def test_cut_text_at_the_limit_passes() -> None:
    policy = RelayPolicy(max_clipboard_bytes=1000)
    (message,) = parse([cut_text(b"a" * 1000)], policy)
    assert message.forward and len(message.data) == 1008


def test_bytes_of_the_bad_message_are_not_returned() -> None:
    parser = ClientMessageParser(RelayPolicy())
    assert parser.feed(b"") == []
    with pytest.raises(ProtocolError):
        parser.feed(b"\x4d" + MESSAGES["KeyEvent"])
