"""The clipboard between an RDP bridge's xfreerdp and its Xvnc: a small X client on the bridge's
display that passes text between two selections.

- xfreerdp keeps the remote desktop's clipboard in its own selection (``--selection``: the one
  ``gateway.rdp.freerdp`` gives it with ``/clipboard:use-selection:``), Xvnc the browser's in
  CLIPBOARD.
- Text copied on the remote desktop: xfreerdp takes its selection; the go-between reads it and
  takes CLIPBOARD with that text, which Xvnc then offers the browser.
- Text pasted from the browser: Xvnc takes CLIPBOARD; the go-between reads it and takes
  xfreerdp's selection, which xfreerdp then announces to the server.

Why not let Xvnc and xfreerdp share CLIPBOARD directly: FreeRDP 3.8 to 3.16 (Debian 12's
backports have 3.10) answer the first request for a new remote clipboard with its first character
only (FreeRDP issues 11714 and 11720); a second request, answered from FreeRDP's cache, has all of
it. Xvnc asks once. The go-between asks twice and keeps the second answer, before anyone else can
ask, so the browser always gets the whole text. With a FreeRDP that answers right the first time
both answers are the same.

Text only (UTF8_STRING, with STRING and TEXT for older requestors), at most ``--max-bytes``
(larger text is not passed on, and the other side's older text is withdrawn, so the browser never
pastes something stale). Larger answers than one X request can carry go out with INCR. The
clipboard's content is never logged, only its size. Runs until the display goes away.

Usage: ``python -m gateway.rdp.clipboard --selection NAME --max-bytes N [--uid U --gid G]`` with
DISPLAY (and
XAUTHORITY) set. The bridge starts it as the gateway's user, which can run the gateway's own
Python wherever it is installed; with ``--uid``/``--gid`` it becomes the bridge's desktop user
(no supplementary groups) once the display is open, before it reads any clipboard.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import Any

from Xlib import X, Xatom, display, error
from Xlib.ext import xfixes
from Xlib.protocol import event as xevent

FETCH_PROPERTY = "DESKGATE_CLIPBOARD"
FETCH_TIMEOUT = 5.0
INCR_CHUNK = 64 * 1024  # well below the 256 KiB an X request can carry without BIG-REQUESTS

log = logging.getLogger("deskgate.rdp.clipboard")


@dataclass
class _Outgoing:
    """Text going to a requestor in INCR chunks: the next one on each deletion of ``prop``."""

    window: Any
    prop: int
    type: int
    data: bytes


class ClipboardBridge:
    def __init__(self, d: display.Display, rdp_selection: str, max_bytes: int) -> None:
        self.d = d
        self.max_bytes = max_bytes
        atom = d.intern_atom
        self.clipboard, self.rdp = atom("CLIPBOARD"), atom(rdp_selection)
        self.targets, self.utf8, self.text_atom = atom("TARGETS"), atom("UTF8_STRING"), atom("TEXT")
        self.incr, self.fetch_prop = atom("INCR"), atom(FETCH_PROPERTY)
        screen = d.screen()
        self.win = screen.root.create_window(-10, -10, 1, 1, 0, screen.root_depth,
                                             event_mask=X.PropertyChangeMask)
        self.held: dict[int, bytes] = {}  # selection -> the text served while we own it
        self.outgoing: dict[tuple[int, int], _Outgoing] = {}
        self.later: list[Any] = []  # owner changes seen while waiting for an answer
        d.xfixes_query_version()
        # python-xlib hands out its own copies of the extension's event classes: match the code.
        self.owner_notify = d.query_extension("XFIXES").first_event + xfixes.XFixesSelectionNotify
        for sel in (self.clipboard, self.rdp):
            d.xfixes_select_selection_input(screen.root, sel, xfixes.XFixesSetSelectionOwnerNotifyMask)
        d.flush()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        # A side that took its selection before we watched: passed on as if seen now.
        for sel in (self.rdp, self.clipboard):
            self._owner_changed(sel, self.d.get_selection_owner(sel))
        while True:
            ev = self.later.pop(0) if self.later else self._next_event(0.5)
            if ev is not None:
                self._handle(ev, during_fetch=False)

    def _next_event(self, timeout: float) -> Any:
        if not self.d.pending_events():
            ready, _, _ = select.select([self.d], [], [], max(timeout, 0))
            if not ready or not self.d.pending_events():
                return None
        return self.d.next_event()

    def _handle(self, ev: Any, *, during_fetch: bool) -> None:
        if ev.type == self.owner_notify and ev.sub_code == xfixes.XFixesSetSelectionOwnerNotify:
            if during_fetch:
                self.later.append(ev)
            else:
                self._owner_changed(ev.selection, ev.owner)
        elif ev.type == X.SelectionRequest:
            self._serve(ev)
        elif ev.type == X.SelectionClear:
            self.held.pop(ev.atom, None)
        elif ev.type == X.PropertyNotify and ev.state == X.PropertyDelete:
            self._next_chunk(ev.window.id, ev.atom)

    # -- a side took its selection: pass its text to the other side --------------------------------

    def _owner_changed(self, selection: int, owner: Any) -> None:
        if _window_id(owner) in (X.NONE, self.win.id):
            return
        other = self.clipboard if selection == self.rdp else self.rdp
        side = "remote desktop" if selection == self.rdp else "browser"
        # The remote side is asked twice: FreeRDP 3.8-3.16 cut the first answer (module text).
        text = self._fetch(selection, times=2 if selection == self.rdp else 1)
        if text is None:
            return
        if len(text) > self.max_bytes:
            log.warning("clipboard from the %s: %d bytes, over the limit of %d; not passed on",
                        side, len(text), self.max_bytes)
            self._give_up(other)
            return
        self.held[other] = text
        self.win.set_selection_owner(other, X.CurrentTime)
        self.d.flush()
        if _window_id(self.d.get_selection_owner(other)) != self.win.id:
            self.held.pop(other, None)
            log.warning("could not take the clipboard for the %s's text", side)
            return
        log.info("clipboard from the %s: %d bytes", side, len(text))

    def _give_up(self, selection: int) -> None:
        if self.held.pop(selection, None) is not None:
            self.win.set_selection_owner(selection, X.NONE)  # only takes effect while we own it
            self.d.flush()

    def _fetch(self, selection: int, times: int) -> bytes | None:
        got: bytes | None = None
        for _ in range(times):
            text = self._fetch_once(selection)
            if text is None:
                break
            got = text
        return got

    def _fetch_once(self, selection: int) -> bytes | None:
        self.win.delete_property(self.fetch_prop)
        self.win.convert_selection(selection, self.utf8, self.fetch_prop, X.CurrentTime)
        self.d.flush()
        deadline = time.monotonic() + FETCH_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            ev = self._next_event(left)
            if ev is None:
                continue
            if ev.type == X.SelectionNotify and ev.requestor.id == self.win.id and ev.selection == selection:
                if ev.property == X.NONE:
                    log.info("the clipboard owner refused to give its text")
                    return None
                prop = self.win.get_full_property(self.fetch_prop, X.AnyPropertyType, sizehint=1 << 16)
                self.win.delete_property(self.fetch_prop)  # also asks an INCR owner for its first part
                self.d.flush()
                if prop is None:
                    log.warning("the clipboard owner answered without its text")
                    return None
                if prop.property_type == self.incr:
                    return self._receive_incr(deadline)
                return _bytes(prop.value)
            self._handle(ev, during_fetch=True)
        log.warning("the clipboard owner did not answer within %g s", FETCH_TIMEOUT)
        return None

    def _receive_incr(self, deadline: float) -> bytes | None:
        """The rest of an answer sent in parts (INCR): each part is a new value of our property,
        asked for by deleting it; an empty part ends it."""
        parts: list[bytes] = []
        size = 0
        while (left := deadline - time.monotonic()) > 0:
            ev = self._next_event(left)
            if ev is None:
                continue
            if not (ev.type == X.PropertyNotify and ev.window.id == self.win.id
                    and ev.atom == self.fetch_prop and ev.state == X.PropertyNewValue):
                self._handle(ev, during_fetch=True)
                continue
            prop = self.win.get_full_property(self.fetch_prop, X.AnyPropertyType, sizehint=1 << 16)
            self.win.delete_property(self.fetch_prop)
            self.d.flush()
            part = _bytes(prop.value) if prop is not None else b""
            if not part:
                return b"".join(parts)
            size += len(part)
            if size > self.max_bytes:
                # Over the limit: read no further (the owner gives up when we stop asking).
                return b"".join(parts) + part
            parts.append(part)
        log.warning("the clipboard owner did not finish its answer within %g s", FETCH_TIMEOUT)
        return None

    # -- serving the text we hold -----------------------------------------------------------------

    def _serve(self, ev: Any) -> None:
        prop = ev.property or ev.target  # ICCCM: obsolete requestors name no property
        text = self.held.get(ev.selection)
        answered = X.NONE
        if text is not None:
            if ev.target == self.targets:
                targets = [self.targets, self.utf8, Xatom.STRING, self.text_atom]
                ev.requestor.change_property(prop, Xatom.ATOM, 32, targets)
                answered = prop
            elif ev.target in (self.utf8, self.text_atom, Xatom.STRING):
                kind = self.utf8
                if ev.target == Xatom.STRING:
                    text = text.decode(errors="replace").encode("latin-1", errors="replace")
                    kind = Xatom.STRING
                self._send(ev.requestor, prop, kind, text)
                answered = prop
        reply = xevent.SelectionNotify(time=ev.time, requestor=ev.requestor, selection=ev.selection,
                                       target=ev.target, property=answered)
        ev.requestor.send_event(reply)
        self.d.flush()

    def _send(self, window: Any, prop: int, kind: int, data: bytes) -> None:
        if len(data) <= INCR_CHUNK:
            window.change_property(prop, kind, 8, data)
            return
        window.change_attributes(event_mask=X.PropertyChangeMask)
        window.change_property(prop, self.incr, 32, [len(data)])
        self.outgoing[(window.id, prop)] = _Outgoing(window, prop, kind, data)

    def _next_chunk(self, window_id: int, prop: int) -> None:
        out = self.outgoing.get((window_id, prop))
        if out is None:
            return
        chunk, out.data = out.data[:INCR_CHUNK], out.data[INCR_CHUNK:]
        out.window.change_property(prop, out.type, 8, chunk)
        if not chunk:  # the empty chunk ends the transfer
            del self.outgoing[(window_id, prop)]
            if window_id != self.win.id:
                out.window.change_attributes(event_mask=X.NoEventMask)
        self.d.flush()


def _window_id(window: Any) -> int:
    """python-xlib gives a window object, or X.NONE (0) for no window."""
    return int(getattr(window, "id", window))


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.rdp.clipboard", description=__doc__.split("\n")[0])
    ap.add_argument("--selection", required=True, help="xfreerdp's selection for the remote clipboard")
    ap.add_argument("--max-bytes", type=int, default=1 << 20)
    ap.add_argument("--uid", type=int)
    ap.add_argument("--gid", type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        d = display.Display()
    except (error.DisplayError, OSError) as e:
        log.error("cannot open the display: %s", e)
        return 1
    if args.uid is not None and args.gid is not None:
        os.setgroups([])
        os.setgid(args.gid)
        os.setuid(args.uid)
    # Errors of requests that expect no reply (a requestor that went away): logged, not fatal.
    d.set_error_handler(lambda err, *_: log.info("X error: %s", type(err).__name__))
    try:
        ClipboardBridge(d, args.selection, args.max_bytes).run()
    except (error.ConnectionClosedError, BrokenPipeError, ConnectionResetError):
        return 0  # the display went away: the bridge is stopping
    return 0


if __name__ == "__main__":
    sys.exit(main())
