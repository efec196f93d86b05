// Deskgate kiosk device: its key, its proofs, its heartbeat, the idle sign-out and the wipe.
//
// At enrolment the page makes an ECDSA P-256 key pair with WebCrypto whose private half cannot
// be exported, and keeps it in IndexedDB; the gateway keeps the public half. Every start and
// heartbeat signs a fresh challenge from the gateway with it, so the device cookie alone (say,
// copied to another browser) proves nothing.

const DB_NAME = 'deskgate-kiosk';
const DB_STORE = 'keys';
const KEY_ID = 'device';
const ALGORITHM = {name: 'ECDSA', namedCurve: 'P-256'};
const SIGNING = {name: 'ECDSA', hash: 'SHA-256'};

export class NoKey extends Error {}

function openDb() {
    return new Promise((resolve, reject) => {
        const req = indexedDB.open(DB_NAME, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
    });
}

async function keyStore(mode, work) {
    const db = await openDb();
    try {
        return await new Promise((resolve, reject) => {
            const tx = db.transaction(DB_STORE, mode);
            const req = work(tx.objectStore(DB_STORE));
            tx.oncomplete = () => resolve(req.result);
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    } finally {
        db.close();
    }
}

export async function loadKey() {
    try {
        return (await keyStore('readonly', (s) => s.get(KEY_ID))) || null;
    } catch {
        return null;
    }
}

function base64(buffer) {
    let text = '';
    for (const byte of new Uint8Array(buffer)) {
        text += String.fromCharCode(byte);
    }
    return btoa(text);
}

// A new device key, stored (replacing any older one); returns its public half (SPKI, base64).
export async function newKey() {
    const pair = await crypto.subtle.generateKey(ALGORITHM, false, ['sign', 'verify']);
    await keyStore('readwrite', (s) => s.put(pair, KEY_ID));
    return base64(await crypto.subtle.exportKey('spki', pair.publicKey));
}

export function postJson(url, csrf, body = {}) {
    return fetch(url, {
        method: 'POST',
        credentials: 'same-origin',
        cache: 'no-store',
        headers: {
            'X-CSRF-Token': csrf,
            'Accept': 'application/json',
            'Content-Type': 'application/json',
        },
        body: JSON.stringify(body),
    });
}

// POST ``body`` to ``url`` with a freshly signed challenge. Throws NoKey when this browser
// holds no device key; returns the gateway's Response otherwise (401: not proven).
export async function prove(url, csrf, body = {}) {
    const pair = await loadKey();
    if (!pair) {
        throw new NoKey('this browser holds no device key');
    }
    const resp = await postJson('/kiosk/challenge', csrf);
    if (!resp.ok) {
        return resp;
    }
    const {challenge} = await resp.json();
    const signature = await crypto.subtle.sign(SIGNING, pair.privateKey,
                                               new TextEncoder().encode(challenge));
    return postJson(url, csrf, {...body, challenge, signature: base64(signature)});
}

// Nothing of the person stays in this browser: storage, readable cookies, the clipboard text,
// the desktop's canvas. (HttpOnly cookies other than the device's are cleared by the gateway.)
export function wipe() {
    try {
        localStorage.clear();
        sessionStorage.clear();
    } catch {
        // storage disabled: nothing kept there
    }
    for (const part of document.cookie.split(';')) {
        const name = part.split('=')[0].trim();
        if (name) {
            document.cookie = `${name}=; Max-Age=0; path=/`;
        }
    }
    const clip = document.getElementById('clipboard-text');
    if (clip) {
        clip.value = '';
    }
    const screen = document.getElementById('screen');
    if (screen) {
        screen.replaceChildren();
    }
}

let signingOut = false;

// True once signOut started: the page is on its way out, nothing else may send it elsewhere
// (the identity provider's sign-out must not be skipped).
export function signingOutNow() {
    return signingOut;
}

// The person leaves this kiosk: their session ends on the gateway, the page is wiped and goes
// back to the kiosk's sign-in (through the identity provider's sign-out when there is one).
export async function signOut(csrf) {
    if (signingOut) {
        return;
    }
    signingOut = true;
    wipe(); // at once: whatever the page does next, nothing of the person stays in it
    let next = '/kiosk';
    try {
        const resp = await postJson('/kiosk/signout', csrf);
        if (resp.ok) {
            next = (await resp.json()).next || next;
        }
    } catch {
        // the gateway is away: wipe and go back anyway
    }
    wipe();
    window.location.replace(next);
}

// Shortcuts that would leave the page, captured where the browser lets a page do so.
export function holdThePage() {
    const leaving = (e) => (e.key === 'F5' || e.key === 'BrowserBack' || e.key === 'BrowserForward'
        || (e.altKey && (e.key === 'ArrowLeft' || e.key === 'ArrowRight' || e.key === 'Home'))
        || ((e.ctrlKey || e.metaKey) && ['r', 'w', 't', 'n', 'l', 'o', 'p', 's', 'h', 'j']
            .includes(e.key.toLowerCase())));
    window.addEventListener('keydown', (e) => {
        if (leaving(e)) {
            e.preventDefault();
        }
    }, {capture: true});
    history.pushState(null, '', window.location.href);
    window.addEventListener('popstate', () => history.pushState(null, '', window.location.href));
    // Keyboard Lock (Chromium, full screen): Escape, Alt+Tab and the like reach the desktop.
    if (navigator.keyboard && navigator.keyboard.lock) {
        navigator.keyboard.lock().catch(() => {});
    }
}

// The person's input: resets the idle countdown, and tells the next heartbeat they are here.
let active = false;
let lastInput = Date.now();
const INPUT_EVENTS = ['keydown', 'pointerdown', 'pointermove', 'wheel', 'touchstart'];

function sawInput() {
    active = true;
    lastInput = Date.now();
}

// A shared kiosk's idle sign-out: a visible countdown ``warningSeconds`` before ``idleSeconds``
// without input, then ``onIdle``. Any input in the page (the desktop included) starts over.
export function watchIdle({idleSeconds, warningSeconds, onIdle}) {
    for (const type of INPUT_EVENTS) {
        window.addEventListener(type, sawInput, {capture: true, passive: true});
    }
    const box = document.getElementById('kiosk-idle-warning');
    const count = document.getElementById('kiosk-idle-countdown');
    const stay = document.getElementById('kiosk-idle-stay');
    stay?.addEventListener('click', sawInput);
    const tick = () => {
        const left = idleSeconds - (Date.now() - lastInput) / 1000;
        if (left <= 0) {
            clearInterval(timer);
            onIdle();
            return;
        }
        const warn = left <= warningSeconds;
        if (box) {
            box.hidden = !warn;
            document.body.dataset.idleWarning = String(warn);
        }
        if (warn && count) {
            count.textContent = String(Math.ceil(left));
        }
    };
    const timer = setInterval(tick, 250);
}

// Every ``seconds``: prove this device is alive and who it shows. ``onRefused``: the gateway
// no longer knows it (revoked) or it cannot prove itself. A gateway that is away is not a
// refusal: the next beat tries again.
export function heartbeat({csrf, seconds, onRefused}) {
    const beat = async () => {
        const wasActive = active;
        active = false;
        try {
            const resp = await prove('/kiosk/heartbeat', csrf, {active: wasActive});
            if (resp.status === 401 || resp.status === 403) {
                onRefused();
                return;
            }
        } catch (err) {
            if (err instanceof NoKey) {
                onRefused();
                return;
            }
        }
        setTimeout(beat, seconds * 1000);
    };
    setTimeout(beat, Math.min(2, seconds) * 1000);
}
