// Deskgate kiosk page (/kiosk): enrol with a pairing code, prove the device and begin (a shared
// kiosk's sign-in screen, or a dedicated kiosk's desktop), or a signed-in person's desktops.

import {NoKey, heartbeat, holdThePage, newKey, postJson, prove, signOut, watchIdle} from '/static/kiosk_device.js';

const root = document.getElementById('kiosk');
const csrf = root.dataset.csrf;
const view = root.dataset.view;
const heartbeatSeconds = Number(root.dataset.heartbeatSeconds) || 15;
const GRANT_RENEW_MS = 4 * 60 * 1000; // a sign-in grant lasts 10 minutes

function show(id, on = true) {
    const el = document.getElementById(id);
    if (el) {
        el.hidden = !on;
    }
}

function say(id, text) {
    const el = document.getElementById(id);
    if (el) {
        el.textContent = text;
        el.hidden = !text;
    }
}

async function errorOf(resp) {
    try {
        const body = await resp.json();
        if (body && typeof body.error === 'string') {
            return body.error;
        }
    } catch {
        // not JSON
    }
    return `${resp.status} ${resp.statusText}`.trim();
}

function backToStart() {
    window.location.replace('/kiosk');
}

// Enrolment: a new key pair, then the pairing code with its public half.
async function pair(event) {
    event.preventDefault();
    const code = document.getElementById('pair-code').value;
    const button = document.getElementById('pair-submit');
    button.disabled = true;
    say('pair-error', '');
    try {
        const publicKey = await newKey();
        const resp = await postJson('/kiosk/pair', csrf, {code, public_key: publicKey});
        if (!resp.ok) {
            say('pair-error', await errorOf(resp));
            return;
        }
        root.dataset.paired = 'true';
        backToStart();
    } catch (err) {
        say('pair-error', `This browser cannot make a device key: ${err.message}`);
    } finally {
        button.disabled = false;
    }
}

// The device proves itself and begins: a dedicated kiosk goes to its desktop; a shared one
// shows the sign-in screen (its grant is renewed while the screen waits for someone).
async function begin() {
    let resp;
    try {
        resp = await prove('/kiosk/start', csrf);
    } catch (err) {
        if (err instanceof NoKey) {
            unproven('This browser does not hold the key this device was enrolled with.');
            return;
        }
        say('kiosk-status', 'The gateway cannot be reached; trying again…');
        setTimeout(begin, 3000);
        return;
    }
    if (resp.status === 401) {
        unproven(await errorOf(resp));
        return;
    }
    if (!resp.ok) {
        say('kiosk-status', `${await errorOf(resp)} Trying again…`);
        setTimeout(begin, 5000);
        return;
    }
    const body = await resp.json();
    if (body.next) {
        window.location.replace(body.next);
        return;
    }
    show('kiosk-starting', false);
    show('kiosk-signin');
    root.dataset.ready = 'signin';
    document.getElementById('username')?.focus();
    setTimeout(begin, GRANT_RENEW_MS);
}

function unproven(reason) {
    show('kiosk-starting', false);
    show('kiosk-signin', false);
    show('kiosk-unproven');
    say('kiosk-unproven-reason', reason);
    show('pair-form');
    root.dataset.ready = 'unproven';
}

holdThePage();
document.getElementById('pair-form')?.addEventListener('submit', pair);
if (view === 'start') {
    begin();
    heartbeat({csrf, seconds: heartbeatSeconds, onRefused: () => unproven(
        'The gateway no longer recognises this device.')});
} else if (view === 'desktops') {
    const leave = () => signOut(csrf);
    document.getElementById('kiosk-signout')?.addEventListener('click', leave);
    watchIdle({
        idleSeconds: Number(root.dataset.idleSeconds),
        warningSeconds: Number(root.dataset.idleWarningSeconds),
        onIdle: leave,
    });
    heartbeat({csrf, seconds: heartbeatSeconds, onRefused: backToStart});
    root.dataset.ready = 'desktops';
} else {
    root.dataset.ready = 'pair';
}
