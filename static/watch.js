// Deskgate admin: watch someone's session, view only.
//
// The gateway enforces view-only (it drops keys, pointer, clipboard and resizes from a watch);
// viewOnly here only stops the browser from sending them. No automatic reconnect: a watch ends
// with the watched session.

import RFB from '/novnc/core/rfb.js';

const root = document.getElementById('deskgate-watch');
const screenEl = document.getElementById('screen');
const statusEl = document.getElementById('status');
const statusText = document.getElementById('status-text');
const statusDetail = document.getElementById('status-detail');

function setState(state) {
    root.dataset.state = state;
}

function showStatus(text, detail = null) {
    statusText.textContent = text;
    statusDetail.textContent = detail || '';
    statusDetail.hidden = !detail;
    statusEl.hidden = false;
}

async function ticket() {
    const resp = await fetch(root.dataset.connectUrl, {
        method: 'POST',
        credentials: 'same-origin',
        headers: {'X-CSRF-Token': root.dataset.csrf, 'Accept': 'application/json'},
    });
    if (resp.status === 401) {
        window.location.assign('/login');
        throw new Error('not signed in');
    }
    let body = null;
    try {
        body = await resp.json();
    } catch {
        // not JSON
    }
    if (!resp.ok) {
        throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
    }
    return body;
}

async function start() {
    let t;
    try {
        t = await ticket();
    } catch (err) {
        setState('disconnected');
        showStatus('Cannot watch this session', err.message);
        return;
    }
    const url = new URL(t.ws_url, window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const rfb = new RFB(screenEl, url.href, {shared: true});
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.background = '#1b1f24';
    rfb.addEventListener('connect', () => {
        setState('connected');
        statusEl.hidden = true;
    });
    rfb.addEventListener('disconnect', () => {
        setState('disconnected');
        showStatus('No longer watching', 'The session ended or the watch was closed.');
    });
}

start();
