"""X clients for the clipboard tests: one that owns a selection with scripted answers (as an RDP
client's selection would be owned) and one that reads any selection, INCR included. Each runs as
its own process on the display (``env``: DISPLAY and XAUTHORITY), so that it is a separate X
client as xfreerdp and Xvnc are."""

from __future__ import annotations

import json
import subprocess
import sys

_OWNER = r"""
import json, sys
from Xlib import X, Xatom, display
from Xlib.protocol import event
answers = [a.encode() for a in json.loads(sys.stdin.read())]
d = display.Display()
sel, utf8, targets = d.intern_atom(sys.argv[1]), d.intern_atom("UTF8_STRING"), d.intern_atom("TARGETS")
w = d.screen().root.create_window(0, 0, 1, 1, 0, d.screen().root_depth)
w.set_selection_owner(sel, X.CurrentTime)
d.flush()
print("owned", flush=True)
served = 0
while True:
    e = d.next_event()
    if e.type == X.SelectionClear:
        print("cleared", flush=True)
        continue
    if e.type != X.SelectionRequest:
        continue
    prop = e.property or e.target
    if e.target == targets:
        e.requestor.change_property(prop, Xatom.ATOM, 32, [targets, utf8])
    elif e.target == utf8:
        e.requestor.change_property(prop, utf8, 8, answers[min(served, len(answers) - 1)])
        served += 1
        print("served", served, flush=True)
    else:
        prop = X.NONE
    e.requestor.send_event(event.SelectionNotify(time=e.time, requestor=e.requestor,
                                                 selection=e.selection, target=e.target,
                                                 property=prop))
    d.flush()
"""

_READER = r"""
import sys, time
from Xlib import X, display
d = display.Display()
sel, prop, incr = d.intern_atom(sys.argv[1]), d.intern_atom("TEST_READ"), d.intern_atom("INCR")
w = d.screen().root.create_window(0, 0, 1, 1, 0, d.screen().root_depth, event_mask=X.PropertyChangeMask)
w.convert_selection(sel, d.intern_atom(sys.argv[2]), prop, X.CurrentTime)
d.flush()
while True:
    e = d.next_event()
    if e.type == X.SelectionNotify:
        break
if e.property == X.NONE:
    sys.exit(3)
p = w.get_full_property(prop, X.AnyPropertyType)
w.delete_property(prop)
d.flush()
if p.property_type != incr:
    out = p.value if isinstance(p.value, bytes) else bytes(p.value)
    if sys.argv[2] == "TARGETS":
        out = " ".join(d.get_atom_name(a) for a in p.value).encode()
    sys.stdout.buffer.write(out)
    sys.exit(0)
parts = []
while True:
    e = d.next_event()
    if e.type == X.PropertyNotify and e.atom == prop and e.state == X.PropertyNewValue:
        p = w.get_full_property(prop, X.AnyPropertyType)
        w.delete_property(prop)
        d.flush()
        if not p.value:
            break
        parts.append(bytes(p.value))
sys.stdout.buffer.write(b"INCR:" + b"".join(parts))
"""


def own(env: dict[str, str], selection: str, answers: list[str]) -> subprocess.Popen[str]:
    """Owns ``selection``; the n-th UTF8_STRING request gets ``answers[n]`` (the last one from
    then on). Prints "owned" once it owns it, "served N" per answer, "cleared" when it loses it."""
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, selection], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(answers))
    proc.stdin.close()
    proc.stdin = None
    assert proc.stdout.readline().strip() == "owned"
    return proc


def read(env: dict[str, str], selection: str, target: str = "UTF8_STRING",
         timeout: float = 10) -> bytes | None:
    """What the owner of ``selection`` answers for ``target`` (None: refused). An answer sent
    in parts comes back as ``b"INCR:" + the whole``."""
    r = subprocess.run([sys.executable, "-c", _READER, selection, target], env=env,
                       capture_output=True, timeout=timeout)  # fmt: skip
    return None if r.returncode == 3 else r.stdout
