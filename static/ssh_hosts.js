// SSH hosts' health, live on /admin/ssh and in the SSH hosts box of /admin/desktops. The
// gateway's event stream (GET /admin/ssh/events) sends every host's state, why, since when and
// how many connections were made; this updates, in place, every element marked with the host's
// id:
//
//   data-ssh-host-id="3" data-ssh-host-part="row"       its row: data-state
//   data-ssh-host-id="3" data-ssh-host-part="state"     the badge: its words, data-state and
//                                                       its state-<state> class
//   data-ssh-host-id="3" data-ssh-host-part="reason"    why (down, key changed)
//   data-ssh-host-id="3" data-ssh-host-part="since"     since when (UTC)
//   data-ssh-host-id="3" data-ssh-host-part="connects"  connections made
//
// A host that is no longer listed was removed: its badge says so.

const EVENTS_URL = '/admin/ssh/events';
const STATE_CLASS = /^state-/;

const streamState = document.getElementById('ssh-stream-state');
const newNote = document.getElementById('ssh-new-note');

function setStream(text, ok) {
    if (!streamState) {
        return;
    }
    streamState.hidden = false;
    streamState.textContent = text;
    streamState.classList.toggle('tag-ok', ok);
    streamState.classList.toggle('tag-warn', !ok);
}

function gone(id) {
    return {id, state: 'removed', state_text: 'removed', reason: '', since: null, connects: 0};
}

function setText(el, text) {
    if (el.textContent !== text) {
        el.textContent = text;
    }
}

// As the page writes it: 2025-01-31 13:45:07, UTC.
function when(at) {
    if (at === null || at === undefined) {
        return '';
    }
    return new Date(at * 1000).toISOString().slice(0, 19).replace('T', ' ');
}

function updateElement(el, host) {
    el.dataset.state = host.state;
    switch (el.dataset.sshHostPart) {
    case 'state':
        setText(el, host.state_text);
        for (const name of [...el.classList]) {
            if (STATE_CLASS.test(name)) {
                el.classList.remove(name);
            }
        }
        el.classList.add(`state-${host.state}`);
        break;
    case 'since':
        el.dataset.at = host.since === null ? '' : String(host.since);
        setText(el, when(host.since));
        break;
    case 'reason':
        setText(el, host.reason || '');
        break;
    case 'connects':
        setText(el, String(host.connects));
        break;
    default:
        break; // the row: its data-state is enough
    }
}

function apply(data) {
    const byId = new Map(data.ssh_hosts.map((h) => [String(h.id), h]));
    const onPage = new Set();
    for (const el of document.querySelectorAll('[data-ssh-host-part]')) {
        const id = el.dataset.sshHostId;
        onPage.add(id);
        updateElement(el, byId.get(id) || gone(id));
    }
    if (newNote) {
        newNote.hidden = [...byId.keys()].every((id) => onPage.has(id));
    }
    setStream('live', true);
}

let events = null;

function listen() {
    events = new EventSource(EVENTS_URL);
    events.addEventListener('ssh_hosts', (e) => {
        try {
            apply(JSON.parse(e.data));
        } catch (err) {
            setStream('not live', false);
            throw err;
        }
    });
    events.addEventListener('error', () => setStream('reconnecting…', false));
}

if (document.querySelector('[data-ssh-host-part]') || newNote) {
    window.addEventListener('pagehide', () => events && events.close());
    listen();
}
