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

import {followRows, setText, setStateClass, when} from './live_rows.js';

function gone(id) {
    return {id, state: 'removed', state_text: 'removed', reason: '', since: null, connects: 0};
}

function updateElement(el, host) {
    el.dataset.state = host.state;
    switch (el.dataset.sshHostPart) {
    case 'state':
        setText(el, host.state_text);
        setStateClass(el, host.state);
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

followRows({
    url: '/admin/ssh/events',
    event: 'ssh_hosts',
    list: 'ssh_hosts',
    marked: '[data-ssh-host-part]',
    idKey: 'sshHostId',
    update: updateElement,
    gone,
    streamState: 'ssh-stream-state',
    newNote: 'ssh-new-note',
});
