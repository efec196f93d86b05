// Deskgate admin: the "Add a desktop" form shows only the fields of the chosen provider and
// protocol.
//
// Each field names when it applies in data-show: "static" (host, port, protocol), "password"
// (static VNC, or RDP with a shared account), "rdp", "rdp-shared" (RDP with a shared account),
// "via" (the SSH host: a static desktop's jump host, or the host an ssh desktop runs on) and
// "local". Fields that do not apply are hidden and disabled, so they are not sent either.
// Without script every field shows with its "(static only)" / "(RDP only)" note, and the server
// ignores what does not apply.

const form = document.getElementById('create-desktop');
const provider = document.getElementById('new-provider');
const protocol = document.getElementById('new-protocol');
const credentials = document.getElementById('new-rdp-credentials');
const port = document.getElementById('new-port');
const passwordNote = document.querySelector('label[for="new-password"] .muted');

const DEFAULT_PORTS = { vnc: '5901', rdp: '3389' };

function applies(show) {
    const isStatic = provider.value === 'static';
    const rdp = isStatic && protocol.value === 'rdp';
    const shared = rdp && credentials.value !== 'per_user';
    switch (show) {
    case 'static':
        return isStatic;
    case 'local':
        return provider.value === 'local';
    case 'via':
        return isStatic || provider.value === 'ssh';
    case 'password':
        return isStatic && (!rdp || shared);
    case 'rdp':
        return rdp;
    case 'rdp-shared':
        return shared;
    default:
        return true;
    }
}

function update() {
    for (const field of form.querySelectorAll('[data-show]')) {
        const on = applies(field.dataset.show);
        field.hidden = !on;
        for (const control of field.querySelectorAll('input, select, textarea')) {
            control.disabled = !on;
        }
    }
    const rdp = protocol.value === 'rdp';
    port.placeholder = DEFAULT_PORTS[rdp ? 'rdp' : 'vnc'];
    if (passwordNote) {
        passwordNote.textContent = rdp ? "(the RDP account's)" : '(VNC, optional)';
    }
}

if (form && provider && protocol && credentials && port) {
    for (const control of [provider, protocol, credentials]) {
        control.addEventListener('change', update);
    }
    update();
}
