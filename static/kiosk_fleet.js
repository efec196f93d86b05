// The kiosk fleet, live on /admin/kiosks. The gateway's event stream (GET /admin/kiosks/events)
// sends every kiosk's state, when it was last seen, from which address, and who and which
// desktop it shows now; this updates, in place, every element marked with the kiosk's id:
//
//   data-kiosk-id="3" data-kiosk-part="row"              its row: data-state
//   data-kiosk-id="3" data-kiosk-part="state"            the badge: its words, data-state and
//                                                        its state-<state> class
//   data-kiosk-id="3" data-kiosk-part="last_seen"        when it was last seen (UTC)
//   data-kiosk-id="3" data-kiosk-part="last_ip"          the address it was last seen from
//   data-kiosk-id="3" data-kiosk-part="current_user"     who is signed in on it now
//   data-kiosk-id="3" data-kiosk-part="current_desktop"  which desktop it shows now
//
// A kiosk that is no longer listed was deleted: its row says so.

const EVENTS_URL = '/admin/kiosks/events';
const STATE_CLASS = /^state-/;

const streamState = document.getElementById('kiosk-stream-state');
const newNote = document.getElementById('kiosk-new-note');

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
    return {id, state: 'deleted', state_text: 'deleted', last_seen: null, last_ip: '',
        current_user: '', current_desktop: ''};
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

function updateElement(el, kiosk) {
    el.dataset.state = kiosk.state;
    switch (el.dataset.kioskPart) {
    case 'state':
        setText(el, kiosk.state_text);
        for (const name of [...el.classList]) {
            if (STATE_CLASS.test(name)) {
                el.classList.remove(name);
            }
        }
        el.classList.add(`state-${kiosk.state}`);
        break;
    case 'last_seen':
        el.dataset.at = kiosk.last_seen === null ? '' : String(kiosk.last_seen);
        setText(el, when(kiosk.last_seen));
        break;
    case 'last_ip':
    case 'current_user':
    case 'current_desktop':
        setText(el, kiosk[el.dataset.kioskPart] || '');
        break;
    default:
        break; // the row: its data-state is enough
    }
}

function apply(data) {
    const byId = new Map(data.kiosks.map((k) => [String(k.id), k]));
    const onPage = new Set();
    for (const el of document.querySelectorAll('[data-kiosk-part]')) {
        const id = el.dataset.kioskId;
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
    events.addEventListener('kiosks', (e) => {
        try {
            apply(JSON.parse(e.data));
        } catch (err) {
            setStream('not live', false);
            throw err;
        }
    });
    events.addEventListener('error', () => setStream('reconnecting…', false));
}

if (document.getElementById('kiosks-table') || newNote) {
    window.addEventListener('pagehide', () => events && events.close());
    listen();
}
