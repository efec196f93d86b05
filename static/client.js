// Deskgate browser client: one desktop session in a full-window noVNC canvas.
//
// Life of a connection:
//   connecting --connect--> connected --drop--> reconnecting --connect--> connected
//        \                      |                    |
//         `----- error ---------+---- user / final --+--> disconnected
// "disconnected" is final for this connection: only the user's Reconnect button
// starts a new one. Each try (first or re-) asks the gateway for a fresh
// one-time ticket; tickets are never reused.
//
// Retrying is bounded. A desktop that does not answer (the gateway does) is tried
// again with backoff for at most GIVE_UP_AFTER_S, then the page says so and stops;
// each retry names the previous try's session ("retry_of"), so that the gateway
// records one failed attempt, not one per try. A gateway that does not answer
// (restarting) is asked GET /healthz every GATEWAY_PROBE_MS, and the client
// reconnects as soon as it answers, for at most GATEWAY_GIVE_UP_S.
//
// Over 400 lines as the one state machine of a connection; what is not about it lives in
// modules of its own (vm_progress.js: a desktop VM's start).

import RFB from '/novnc/core/rfb.js';
import {clearStages, watchStart} from '/static/vm_progress.js';
import {heartbeat, holdThePage, signOut, signingOutNow, watchIdle} from '/static/kiosk_device.js';

const BACKOFF_FIRST_S = 1;
const BACKOFF_MAX_S = 8;
const BACKOFF_JITTER = 0.2; // up to +/-10 % of the delay
const GIVE_UP_AFTER_S = 30;
const GATEWAY_PROBE_MS = 300;
const GATEWAY_PROBE_TIMEOUT_MS = 2000;
const GATEWAY_GIVE_UP_S = 120;
// A connection that lasted this long starts the retry budget afresh when it drops; one that
// drops sooner (a desktop that accepts and closes at once) counts as one more failed try.
const LASTING_CONNECTION_S = 10;

const TRANSITIONS = {
    connecting: ['connected', 'reconnecting', 'disconnected'],
    connected: ['reconnecting', 'disconnected'],
    reconnecting: ['connecting', 'connected', 'disconnected'],
    disconnected: ['connecting'],
};

// An error that ends the connection for good (no automatic retry).
class FinalError extends Error {}
// The browser is being sent elsewhere (sign-in page): stop doing anything.
class Redirecting extends Error {}
// A per-user RDP desktop needs the person's own account (none stored, or it was refused).
class CredentialsNeeded extends Error {}
// The gateway did not answer at all (network error): wait until it does.
class GatewayUnreachable extends Error {}
// The gateway answered that this try failed and may be retried; names the try's session.
class TryFailed extends Error {
    constructor(message, sid) {
        super(message);
        this.sessionId = sid;
    }
}

const root = document.getElementById('deskgate-client');
const screenEl = document.getElementById('screen');
const statusEl = document.getElementById('status');
const statusText = document.getElementById('status-text');
const statusDetail = document.getElementById('status-detail');
const statusActions = document.getElementById('status-actions');
const reconnectButton = document.getElementById('reconnect');
const backLink = document.getElementById('back-to-portal');
const cadButton = document.getElementById('ctrl-alt-del');
const clipboardToggle = document.getElementById('clipboard-toggle');
const clipboardPanel = document.getElementById('clipboard-panel');
const clipboardText = document.getElementById('clipboard-text');
const clipboardSend = document.getElementById('clipboard-send');
const clipboardClose = document.getElementById('clipboard-close');
const fullscreenButton = document.getElementById('fullscreen');
const disconnectButton = document.getElementById('disconnect');
const forgetButton = document.getElementById('forget-account');
const watchedIndicator = document.getElementById('watched-indicator');
const desktopUnresponsive = document.getElementById('desktop-unresponsive');
const adminMessage = document.getElementById('admin-message');
const adminMessageFrom = document.getElementById('admin-message-from');
const adminMessageText = document.getElementById('admin-message-text');
const adminMessageDismiss = document.getElementById('admin-message-dismiss');
const credentialsForm = document.getElementById('rdp-credentials');
const credentialsUser = document.getElementById('rdp-username');
const credentialsDomain = document.getElementById('rdp-domain');
const credentialsPassword = document.getElementById('rdp-password');
const credentialsSave = document.getElementById('rdp-save');
const credentialsError = document.getElementById('rdp-credentials-error');
const credentialsRemember = document.getElementById('rdp-remember'); // absent: never stored

const connectUrl = root.dataset.connectUrl;
const csrfToken = root.dataset.csrf;
const credentialsUrl = root.dataset.credentialsUrl;
const perUserCredentials = root.dataset.credentials === 'per_user';
const progressUrl = root.dataset.progressUrl || null; // desktop VMs: start on connect
// On a kiosk: 'shared' (a person signed in; leaving signs them out) or 'dedicated' (a fixed
// desktop that reconnects for ever, never asks anyone anything); '' in an ordinary browser.
const kioskMode = root.dataset.kiosk || '';
const dedicated = kioskMode === 'dedicated';
const viewOnly = root.dataset.viewOnly === 'true';
const giveUpAfterS = dedicated ? Infinity : GIVE_UP_AFTER_S;
const gatewayGiveUpS = dedicated ? Infinity : GATEWAY_GIVE_UP_S;
// What ends a kiosk's stay on this page at once: the kiosk was revoked or changed.
const KIOSK_ENDED = /revoked|changed by an administrator|not enrolled/;

let state = root.dataset.state || 'connecting';
let rfb = null;
let sessionId = null;
let attempt = 0;            // failed tries since the last lasting connection
let failingSince = null;    // when the desktop first failed (ms), since the last lasting connection
let connectedAt = null;     // when the current connection reached the desktop (ms)
let gatewayLostAt = null;   // when the gateway stopped answering (ms), since it last answered
let everConnected = false;  // this connection (since the user's last start) reached the desktop
let retryTimer = null;
let countdownTimer = null;
let userDisconnect = false;
let securityFailure = null; // reason of the last 'securityfailure' event
let generation = 0;         // bumps on every user (re)start; stale async work checks it
let notifications = null;   // EventSource of the connected session's notifications

function setState(next) {
    if (next !== state && !TRANSITIONS[state].includes(next)) {
        console.warn(`deskgate: ignoring transition ${state} -> ${next}`);
        return false;
    }
    state = next;
    root.dataset.state = next;
    const connected = next === 'connected';
    cadButton.disabled = !connected;
    clipboardSend.disabled = !connected;
    disconnectButton.disabled = next === 'disconnected';
    return true;
}

// The overlay always offers the way back to the portal; Reconnect only once it has stopped.
function showStatus(text, {detail = null, final = false} = {}) {
    statusText.textContent = text;
    statusDetail.textContent = detail || '';
    statusDetail.hidden = !detail;
    reconnectButton.hidden = !final;
    backLink.hidden = false;
    statusActions.hidden = false;
    statusEl.classList.toggle('status-final', final);
    statusEl.hidden = false;
    credentialsForm.hidden = true;
}

function hideStatus() {
    statusEl.hidden = true;
    clearStages(statusEl.querySelector('.status-box'));
}

function goToLogin() {
    if (!(kioskMode && signingOutNow())) { // a kiosk's sign-out navigates by itself
        window.location.assign(kioskMode ? '/kiosk' : '/login');
    }
    throw new Redirecting();
}

async function readErrorBody(resp) {
    try {
        const body = await resp.json();
        if (body && typeof body.error === 'string' && body.error) {
            return body;
        }
    } catch {
        // not JSON: fall through
    }
    return {error: `${resp.status} ${resp.statusText}`.trim()};
}

async function readError(resp) {
    return (await readErrorBody(resp)).error;
}

// A CSRF-protected JSON POST to the gateway, with the session cookie.
function postJson(url, body) {
    return fetch(url, {
        method: 'POST',
        credentials: 'same-origin',
        headers: {
            'X-CSRF-Token': csrfToken,
            'Accept': 'application/json',
            'Content-Type': 'application/json',
        },
        body: JSON.stringify(body),
    });
}

// Step 1: a fresh session ticket from the gateway. ``retryOf``: the previous try's session.
async function requestTicket(retryOf) {
    let resp;
    try {
        // The desktop area's size: an RDP bridge starts at it (VNC desktops resize later).
        const area = screenEl.getBoundingClientRect();
        const body = {
            width: Math.round(area.width) || window.innerWidth,
            height: Math.round(area.height) || window.innerHeight,
        };
        if (retryOf) {
            body.retry_of = retryOf;
        }
        // A stopped desktop VM is started before the ticket comes: show its stages meanwhile.
        const endWatch = progressUrl
            ? watchStart(progressUrl, statusEl.querySelector('.status-box'), () => {
                statusText.textContent = 'Starting your desktop…';
            })
            : null;
        try {
            resp = await postJson(connectUrl, body);
        } finally {
            endWatch?.(resp && resp.ok ? 'connecting' : null);
        }
    } catch {
        throw new GatewayUnreachable('The gateway cannot be reached.');
    }
    gatewayLostAt = null;
    if (resp.status === 401) {
        goToLogin();
    }
    if (!resp.ok) {
        const failure = await readErrorBody(resp);
        const reason = failure.error;
        // 428: no account of this person is stored for a per-user desktop; a 424 there that
        // asks for it: the desktop refused the stored account (the gateway forgot it). Ask.
        if (resp.status === 428 || (resp.status === 424 && perUserCredentials
                                    && failure.credentials === 'required')) {
            throw new CredentialsNeeded(reason);
        }
        // Server-side trouble may pass; a refusal (4xx) will not, nor what the gateway says
        // a retry cannot help (a desktop under maintenance).
        if (failure.reconnect !== false
                && (resp.status >= 500 || resp.status === 408 || resp.status === 429)) {
            throw new TryFailed(reason, typeof failure.session_id === 'string' ? failure.session_id : null);
        }
        throw new FinalError(reason);
    }
    const body = await resp.json();
    if (!body || typeof body.ws_url !== 'string' || typeof body.session_id !== 'string') {
        throw new FinalError('The gateway sent an unexpected answer.');
    }
    return body;
}

function websocketUrl(relative) {
    const url = new URL(relative, window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
}

// Asks whether the dropped session may be resumed. Returns {reconnect, reason, reached}:
// reached is false when the gateway did not answer at all.
async function sessionStatus(sid) {
    let resp;
    try {
        resp = await fetch(`/sessions/${encodeURIComponent(sid)}`, {
            credentials: 'same-origin',
            headers: {'Accept': 'application/json'},
        });
    } catch {
        return {reconnect: true, reason: null, reached: false};
    }
    if (resp.status === 401) {
        goToLogin();
    }
    if (resp.status === 403 || resp.status === 404) {
        return {reconnect: false, reason: await readError(resp), reached: true};
    }
    if (!resp.ok) {
        return {reconnect: true, reason: null, reached: true};
    }
    try {
        const body = await resp.json();
        return {reconnect: body.reconnect !== false, reason: body.close_reason || null, reached: true};
    } catch {
        return {reconnect: true, reason: null, reached: true};
    }
}

function clearTimers() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = null;
    countdownTimer = null;
}

function finish(text, detail = null) {
    clearTimers();
    if (kioskMode && kioskFinish(text, detail)) {
        return;
    }
    setState('disconnected');
    showStatus(text, {detail, final: true});
}

// A kiosk's connection that ended for good. Revoked or changed: back to the kiosk's start. A
// dedicated kiosk tries again (for ever, with backoff); a shared kiosk says why for a moment,
// then signs its person out and clears the screen. True when handled here.
function kioskFinish(text, detail) {
    if (signingOutNow()) {
        return true;
    }
    if (KIOSK_ENDED.test(detail || '')) {
        window.location.replace('/kiosk');
        return true;
    }
    if (dedicated) {
        failingSince = null;
        scheduleReconnect(generation, detail || text);
        return true;
    }
    setState('disconnected');
    showStatus(text, {detail, final: true});
    reconnectButton.hidden = true;
    backLink.hidden = true;
    setTimeout(() => signOut(csrfToken), userDisconnect ? 0 : 4000);
    return true;
}

async function connect(gen) {
    securityFailure = null;
    let ticket;
    try {
        ticket = await requestTicket(sessionId);
    } catch (err) {
        if (err instanceof Redirecting || gen !== generation) {
            return;
        }
        if (err instanceof CredentialsNeeded) {
            askForCredentials(err.message);
            return;
        }
        if (err instanceof GatewayUnreachable) {
            waitForGateway(gen, err.message);
        } else if (err instanceof TryFailed) {
            if (err.sessionId) {
                sessionId = err.sessionId; // the next try continues this attempt
            }
            scheduleReconnect(gen, err.message);
        } else {
            finish('Could not connect', err.message);
        }
        return;
    }
    if (gen !== generation) {
        return;
    }
    sessionId = ticket.session_id;
    root.dataset.sessionId = sessionId;
    try {
        rfb = new RFB(screenEl, websocketUrl(ticket.ws_url), {shared: true});
    } catch (err) {
        finish('Could not connect', err.message);
        return;
    }
    rfb.scaleViewport = true;
    rfb.resizeSession = !viewOnly;
    rfb.viewOnly = viewOnly; // the gateway drops a view-only connection's input as well
    rfb.clipViewport = false;
    rfb.background = '#1b1f24';
    const own = rfb;
    own.addEventListener('connect', () => onConnect(own));
    own.addEventListener('disconnect', (e) => onDisconnect(own, gen, e.detail));
    own.addEventListener('securityfailure', (e) => {
        securityFailure = e.detail.reason || `security failure (status ${e.detail.status})`;
    });
    own.addEventListener('credentialsrequired', () => {
        // The gateway holds the desktop's credentials; it never asks the browser.
        securityFailure = 'The desktop asked the browser for credentials.';
        own.disconnect();
    });
    own.addEventListener('clipboard', (e) => {
        clipboardText.value = e.detail.text;
    });
    own.addEventListener('desktopname', (e) => {
        if (e.detail.name) {
            root.dataset.remoteName = e.detail.name;
        }
    });
}

// Per-user RDP desktops: the person's own account, asked in the status overlay, saved (write-only)
// on the gateway, then the connection starts again.

function askForCredentials(reason) {
    clearTimers();
    setState('disconnected');
    showStatus('Sign in to this desktop', {detail: reason, final: true});
    reconnectButton.hidden = true;
    credentialsError.hidden = true;
    credentialsPassword.value = '';
    credentialsSave.disabled = false;
    credentialsForm.hidden = false;
    (credentialsUser.value ? credentialsPassword : credentialsUser).focus();
}

async function saveCredentials(event) {
    event.preventDefault();
    credentialsError.hidden = true;
    credentialsSave.disabled = true;
    let resp;
    try {
        resp = await postJson(credentialsUrl, {
            username: credentialsUser.value,
            domain: credentialsDomain.value,
            password: credentialsPassword.value,
            remember: credentialsRemember ? credentialsRemember.checked : false,
        });
    } catch {
        resp = null;
    }
    credentialsPassword.value = '';
    credentialsSave.disabled = false;
    if (resp && resp.status === 401) {
        window.location.assign('/login');
        return;
    }
    if (!resp || !resp.ok) {
        credentialsError.textContent = resp ? await readError(resp) : 'The gateway cannot be reached.';
        credentialsError.hidden = false;
        credentialsPassword.focus();
        return;
    }
    try {
        await resp.json(); // {saved: true|false}; read so that the response is complete
    } catch {
        // nothing to read
    }
    start();
}

credentialsForm.addEventListener('submit', saveCredentials);

function onConnect(own) {
    if (own !== rfb) {
        return;
    }
    connectedAt = Date.now();
    gatewayLostAt = null;
    everConnected = true;
    clearTimers();
    setState('connected');
    hideStatus();
    own.focus();
    listenForNotifications(sessionId);
}

// Notifications from the gateway while connected: admin messages, "being watched".

function setWatched(watchers) {
    watchedIndicator.hidden = !(watchers > 0);
    root.dataset.watchers = String(watchers || 0);
}

// The gateway's word on whether the desktop answers (see desktop_unresponsive_seconds).
function setDesktopResponding(responding) {
    desktopUnresponsive.hidden = responding;
    root.dataset.desktopResponding = String(responding);
}

function showAdminMessage(from, text) {
    adminMessageFrom.textContent = from ? `Message from ${from}:` : 'Message from an administrator:';
    adminMessageText.textContent = text;
    adminMessage.hidden = false;
}

function stopNotifications() {
    if (notifications) {
        notifications.close();
        notifications = null;
    }
    setWatched(0);
    setDesktopResponding(true);
}

function listenForNotifications(sid) {
    stopNotifications();
    if (!sid) {
        return;
    }
    const source = new EventSource(`/sessions/${encodeURIComponent(sid)}/events`);
    notifications = source;
    source.addEventListener('message', (e) => {
        let event;
        try {
            event = JSON.parse(e.data);
        } catch {
            return;
        }
        if (event.type === 'message' && typeof event.text === 'string') {
            showAdminMessage(event.from, event.text);
        } else if (event.type === 'watched') {
            setWatched(Number(event.watchers) || 0);
        } else if (event.type === 'desktop') {
            setDesktopResponding(event.responding !== false);
        }
    });
    source.addEventListener('error', () => {
        // The session ended (404) or the gateway went away: the relay's own events say what
        // happens next; only a still-open stream is retried by the browser.
        if (source.readyState === EventSource.CLOSED && notifications === source) {
            notifications = null;
            setWatched(0);
        }
    });
}

adminMessageDismiss.addEventListener('click', () => {
    adminMessage.hidden = true;
    if (rfb) {
        rfb.focus();
    }
});

async function onDisconnect(own, gen, detail) {
    if (own !== rfb) {
        return;
    }
    rfb = null;
    stopNotifications();
    if (connectedAt !== null && Date.now() - connectedAt >= LASTING_CONNECTION_S * 1000) {
        attempt = 0;
        failingSince = null;
    }
    connectedAt = null;
    if (gen !== generation) {
        return;
    }
    if (userDisconnect) {
        finish('Disconnected', closedByUserText());
        return;
    }
    if (securityFailure) {
        finish('Connection refused', securityFailure);
        return;
    }
    setState('reconnecting');
    showStatus(everConnected ? 'Connection lost' : 'Connecting…', {detail: 'Checking the session…'});
    let verdict;
    try {
        verdict = sessionId ? await sessionStatus(sessionId) : {reconnect: true, reason: null, reached: true};
    } catch (err) {
        if (err instanceof Redirecting) {
            return;
        }
        verdict = {reconnect: true, reason: null, reached: true};
    }
    if (gen !== generation || state !== 'reconnecting') {
        return;
    }
    if (!verdict.reached) {
        waitForGateway(gen, 'The gateway cannot be reached.');
        return;
    }
    if (!verdict.reconnect) {
        finish(everConnected ? 'Disconnected' : 'Could not connect',
               verdict.reason || 'The session has ended.');
        return;
    }
    scheduleReconnect(gen, verdict.reason || (detail && detail.clean ? null : 'The connection dropped.'));
}

function backoffSeconds(n) {
    const base = Math.min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (n - 1));
    const jitter = 1 + (Math.random() - 0.5) * BACKOFF_JITTER;
    return Math.min(BACKOFF_MAX_S, base * jitter);
}

function sentence(text) {
    const t = (text || '').trim();
    if (!t) {
        return '';
    }
    const s = t.charAt(0).toUpperCase() + t.slice(1);
    return /[.!?]$/.test(s) ? s : `${s}.`;
}

// The gateway answers but the desktop does not: try again with backoff until GIVE_UP_AFTER_S
// have passed since it first failed, then stop and say so.
function scheduleReconnect(gen, reason) {
    attempt += 1;
    setState('reconnecting');
    const now = Date.now();
    if (failingSince === null) {
        failingSince = now;
    }
    const leftMs = failingSince + giveUpAfterS * 1000 - now;
    if (leftMs < BACKOFF_FIRST_S * 1000) {
        const title = 'The desktop cannot be reached';
        const why = sentence(reason);
        finish(title, `${why && why !== `${title}.` ? `${why} ` : ''}Deskgate stopped trying after`
               + ` ${attempt} tries in ${Math.round((now - failingSince) / 1000)} s. Try again`
               + ' later, or go back to your desktops.');
        root.dataset.gaveUp = 'desktop';
        return;
    }
    const delayMs = Math.min(leftMs, Math.round(backoffSeconds(attempt) * 1000));
    const due = now + delayMs;
    const again = everConnected ? 'Reconnecting' : 'Trying again';
    const tick = () => {
        const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        showStatus(`${again} in ${left} s (attempt ${attempt})`, {detail: sentence(reason) || null});
    };
    clearTimers();
    tick();
    countdownTimer = setInterval(tick, 250);
    retryTimer = setTimeout(() => {
        clearTimers();
        if (gen !== generation || state !== 'reconnecting') {
            return;
        }
        showStatus(`${again} (attempt ${attempt})…`, {detail: sentence(reason) || null});
        connect(gen);
    }, delayMs);
}

// The gateway does not answer (restarting, or the network is down): ask GET /healthz every
// GATEWAY_PROBE_MS and reconnect as soon as it answers; stop after GATEWAY_GIVE_UP_S.
function waitForGateway(gen, reason) {
    setState('reconnecting');
    clearTimers();
    if (gatewayLostAt === null) {
        gatewayLostAt = Date.now();
    }
    showStatus('Waiting for the gateway…',
               {detail: `${sentence(reason)} Reconnecting as soon as it answers.`});
    const probe = async () => {
        retryTimer = null;
        if (gen !== generation || state !== 'reconnecting') {
            return;
        }
        if (Date.now() - gatewayLostAt > gatewayGiveUpS * 1000) {
            finish('The gateway cannot be reached',
                   `It has not answered for ${GATEWAY_GIVE_UP_S} s. Try again later.`);
            root.dataset.gaveUp = 'gateway';
            return;
        }
        let answered = false;
        try {
            const resp = await fetch('/healthz', {
                cache: 'no-store',
                signal: AbortSignal.timeout(GATEWAY_PROBE_TIMEOUT_MS),
            });
            answered = resp.ok;
        } catch {
            answered = false;
        }
        if (gen !== generation || state !== 'reconnecting' || retryTimer !== null) {
            return;
        }
        if (answered) {
            showStatus('Reconnecting…', {detail: 'The gateway answers again.'});
            connect(gen);
            return;
        }
        retryTimer = setTimeout(probe, GATEWAY_PROBE_MS);
    };
    retryTimer = setTimeout(probe, GATEWAY_PROBE_MS);
}

function start() {
    generation += 1;
    userDisconnect = false;
    attempt = 0;
    failingSince = null;
    connectedAt = null;
    gatewayLostAt = null;
    everConnected = false;
    delete root.dataset.gaveUp;
    sessionId = null;
    clearTimers();
    setState('connecting');
    showStatus('Connecting…');
    connect(generation);
}

let accountForgotten = false; // the person asked to forget their saved RDP account

function closedByUserText() {
    return accountForgotten
        ? 'Your saved account for this desktop was forgotten: the next connection asks for it.'
        : 'You closed the connection.';
}

// Per-user RDP desktops: forget the saved account, then end the connection that used it.
async function forgetAccount() {
    let resp;
    try {
        resp = await fetch(credentialsUrl, {
            method: 'DELETE',
            credentials: 'same-origin',
            headers: {'X-CSRF-Token': csrfToken, 'Accept': 'application/json'},
        });
    } catch {
        window.alert('Could not forget the account: the gateway cannot be reached.');
        return;
    }
    if (resp.status === 401) {
        goToLogin();
    }
    if (!resp.ok) {
        window.alert(`Could not forget the account: ${await readError(resp)}`);
        return;
    }
    accountForgotten = true;
    userDisconnects();
}

function userDisconnects() {
    userDisconnect = true;
    clearTimers();
    if (rfb) {
        rfb.disconnect(); // its 'disconnect' event shows the final overlay
    } else {
        generation += 1; // abandon a pending ticket request or retry
        finish('Disconnected', closedByUserText());
    }
}

// Toolbar

cadButton.addEventListener('click', () => {
    if (rfb) {
        rfb.sendCtrlAltDel();
        rfb.focus();
    }
});

function setClipboardOpen(open) {
    clipboardPanel.hidden = !open;
    clipboardToggle.setAttribute('aria-expanded', String(open));
    if (open) {
        clipboardText.focus();
    } else if (rfb) {
        rfb.focus();
    }
}

clipboardToggle.addEventListener('click', () => setClipboardOpen(clipboardPanel.hidden));
clipboardClose.addEventListener('click', () => setClipboardOpen(false));
clipboardSend.addEventListener('click', () => {
    if (rfb && state === 'connected') {
        rfb.clipboardPasteFrom(clipboardText.value);
        rfb.focus();
    }
});

function updateFullscreenLabel() {
    fullscreenButton.textContent = document.fullscreenElement ? 'Exit full screen' : 'Full screen';
}

fullscreenButton.addEventListener('click', async () => {
    try {
        if (document.fullscreenElement) {
            await document.exitFullscreen();
        } else {
            await root.requestFullscreen();
        }
    } catch (err) {
        console.warn('deskgate: full screen unavailable:', err.message);
    }
    if (rfb) {
        rfb.focus();
    }
});
document.addEventListener('fullscreenchange', updateFullscreenLabel);
if (!document.fullscreenEnabled) {
    fullscreenButton.hidden = true;
}

disconnectButton.addEventListener('click', userDisconnects);
forgetButton.hidden = !perUserCredentials;
forgetButton.addEventListener('click', forgetAccount);
reconnectButton.addEventListener('click', start);

// A kiosk: the menu, its heartbeat, and for a shared kiosk the idle sign-out.
if (kioskMode) {
    const menu = document.getElementById('kiosk-menu');
    const toggle = document.getElementById('kiosk-menu-toggle');
    toggle.addEventListener('click', () => {
        menu.hidden = !menu.hidden;
        toggle.setAttribute('aria-expanded', String(!menu.hidden));
    });
    document.getElementById('kiosk-reconnect').addEventListener('click', () => {
        menu.hidden = true;
        start();
    });
    document.getElementById('kiosk-signout')?.addEventListener('click', () => signOut(csrfToken));
    holdThePage();
    heartbeat({
        csrf: csrfToken,
        seconds: Number(root.dataset.heartbeatSeconds) || 15,
        onRefused: () => window.location.replace('/kiosk'),
    });
    if (!dedicated) {
        watchIdle({
            idleSeconds: Number(root.dataset.idleSeconds),
            warningSeconds: Number(root.dataset.idleWarningSeconds),
            onIdle: () => signOut(csrfToken),
        });
    }
}

start();
