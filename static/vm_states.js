// Desktop VM states, live on the admin pages (/admin/vms, /admin/desktops and a desktop VM's
// own page). The gateway's event stream (GET /admin/vms/events) sends every VM's state, the
// reason beside it, whether an action runs on it now, its running mode, its hypervisor's
// problem and the power actions its state allows; this updates, in place, every element marked
// with the VM's id:
//
//   data-vm-id="7" data-vm-part="state"    the badge: its text and its state-<state> class
//   data-vm-id="7" data-vm-part="reason"   why it is in that state (hidden when nothing)
//   data-vm-id="7" data-vm-part="busy"     shown while an action runs on it
//   data-vm-id="7" data-vm-part="mode"     its running mode in words
//   data-vm-id="7" data-vm-part="problem"  its hypervisor could not be reached (libvirt's words)
//   data-vm-id="7" data-vm-action="start"  a power button: enabled only when the state allows it
//
// Every marked element also carries data-vm-state (for styling). A VM that is no longer listed
// was deleted: its elements say so and its buttons are disabled.

import {followRows, setText, setStateClass} from './live_rows.js';

function gone(id) {
    return {id, state: 'deleted', reason: '', busy: false, mode_text: null,
        hypervisor_problem: null, actions: []};
}

function updateElement(el, vm) {
    el.dataset.vmState = vm.state;
    const action = el.dataset.vmAction;
    if (action) {
        const allowed = vm.actions.includes(action);
        el.disabled = !allowed;
        el.title = allowed ? '' : `not possible while the VM is ${vm.state}`;
        return;
    }
    switch (el.dataset.vmPart) {
    case 'state':
        setText(el, vm.state);
        setStateClass(el, vm.state);
        break;
    case 'reason':
        setText(el, vm.reason || '');
        el.hidden = !vm.reason;
        break;
    case 'busy':
        el.hidden = !vm.busy;
        break;
    case 'mode':
        if (vm.mode_text) {
            setText(el, vm.mode_text);
        }
        break;
    case 'problem':
        setText(el, vm.hypervisor_problem ? `cannot be reached: ${vm.hypervisor_problem}` : '');
        el.hidden = !vm.hypervisor_problem;
        break;
    default:
        break; // a row or another container: its data-vm-state is enough
    }
}

followRows({
    url: '/admin/vms/events',
    event: 'vms',
    list: 'vms',
    marked: '[data-vm-id]',
    idKey: 'vmId',
    update: updateElement,
    gone,
    streamState: 'vm-stream-state',
    newNote: 'vm-new-note',
});
