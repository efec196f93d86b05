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

import {followRows, setText, setStateClass, when} from './live_rows.js';

function gone(id) {
    return {id, state: 'deleted', state_text: 'deleted', last_seen: null, last_ip: '',
        current_user: '', current_desktop: ''};
}

function updateElement(el, kiosk) {
    el.dataset.state = kiosk.state;
    switch (el.dataset.kioskPart) {
    case 'state':
        setText(el, kiosk.state_text);
        setStateClass(el, kiosk.state);
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

followRows({
    url: '/admin/kiosks/events',
    event: 'kiosks',
    list: 'kiosks',
    marked: '[data-kiosk-part]',
    idKey: 'kioskId',
    update: updateElement,
    gone,
    streamState: 'kiosk-stream-state',
    newNote: 'kiosk-new-note',
});
