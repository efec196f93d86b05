// Deskgate admin: the live sessions dashboard.
//
// The gateway streams a full snapshot every second (and at once when a session starts or
// closes) as server-sent events; rows are updated in place, keyed by session id, so buttons
// stay where they are while the figures change. Actions are POSTs with the CSRF token.

const root = document.getElementById('sessions-dashboard');
const csrfToken = root.dataset.csrf;
const liveBody = document.querySelector('#live-sessions tbody');
const recentBody = document.querySelector('#recent-sessions tbody');
const liveEmpty = document.getElementById('live-empty');
const recentEmpty = document.getElementById('recent-empty');
const liveCount = document.getElementById('live-count');
const bridgeStats = document.getElementById('bridge-stats');
const streamState = document.getElementById('stream-state');
const result = document.getElementById('action-result');
const dialog = document.getElementById('action-dialog');
const form = document.getElementById('action-form');
const title = document.getElementById('action-title');
const target = document.getElementById('action-target');
const label = document.getElementById('action-label');
const text = document.getElementById('action-text');
const submit = document.getElementById('action-submit');
const cancel = document.getElementById('action-cancel');
const actionError = document.getElementById('action-error');

const LIVE_COLUMNS = ['user', 'desktop', 'protocol', 'client_ip', 'user_agent', 'started',
    'duration', 'bytes', 'rate', 'rtt', 'idle', 'watchers'];

function bytes(n) {
    if (n < 1024) {
        return `${n} B`;
    }
    const units = ['KB', 'MB', 'GB', 'TB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
        v /= 1024;
        i += 1;
    }
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
    if (s === null || s === undefined) {
        return '—';
    }
    s = Math.max(0, Math.floor(s));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h) {
        return `${h} h ${String(m).padStart(2, '0')} min`;
    }
    return m ? `${m} min ${String(sec).padStart(2, '0')} s` : `${sec} s`;
}

function clock(t) {
    if (!t) {
        return '—';
    }
    const d = new Date(t * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function liveCells(s) {
    return {
        user: s.user,
        desktop: s.desktop,
        protocol: s.watch_of ? `${s.protocol.toUpperCase()} · watch` : s.protocol.toUpperCase(),
        client_ip: s.client_ip,
        user_agent: s.user_agent || '—',
        started: clock(s.started_at),
        duration: duration(s.duration_s),
        bytes: `${bytes(s.bytes_up)} / ${bytes(s.bytes_down)}`,
        rate: `${bytes(s.rate_up_bps)}/s / ${bytes(s.rate_down_bps)}/s`,
        rtt: s.rtt_ms === null ? '—' : `${s.rtt_ms} ms`,
        idle: duration(s.idle_s),
        watchers: String(s.watchers),
    };
}

function button(textContent, action, id, extra = '') {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = `button button-small ${extra}`.trim();
    b.textContent = textContent;
    b.dataset.action = action;
    b.dataset.sessionId = id;
    return b;
}

function newLiveRow(s) {
    const tr = document.createElement('tr');
    tr.dataset.sessionId = s.id;
    for (const col of LIVE_COLUMNS) {
        const td = document.createElement('td');
        td.dataset.col = col;
        if (['duration', 'bytes', 'rate', 'rtt', 'idle', 'watchers'].includes(col)) {
            td.className = 'num nowrap';
        } else if (col === 'user_agent') {
            td.className = 'user-agent';
        }
        tr.appendChild(td);
    }
    const actions = document.createElement('td');
    actions.className = 'actions-col';
    const row = document.createElement('div');
    row.className = 'button-row';
    if (!s.watch_of) {
        row.appendChild(button('Message', 'message', s.id));
        const watch = document.createElement('a');
        watch.className = 'button button-small';
        watch.textContent = 'Watch';
        watch.dataset.action = 'watch';
        watch.href = `/admin/sessions/${encodeURIComponent(s.id)}/watch`;
        watch.target = '_blank';
        watch.rel = 'noopener';
        row.appendChild(watch);
    }
    row.appendChild(button('Disconnect', 'disconnect', s.id, 'button-danger'));
    actions.appendChild(row);
    tr.appendChild(actions);
    return tr;
}

function renderLive(sessions) {
    const seen = new Set();
    for (const s of sessions) {
        seen.add(s.id);
        let tr = liveBody.querySelector(`tr[data-session-id="${CSS.escape(s.id)}"]`);
        if (!tr) {
            tr = newLiveRow(s);
            liveBody.appendChild(tr);
        }
        const cells = liveCells(s);
        for (const col of LIVE_COLUMNS) {
            const td = tr.querySelector(`td[data-col="${col}"]`);
            if (td.textContent !== cells[col]) {
                td.textContent = cells[col];
            }
        }
        tr.querySelector('td[data-col="user_agent"]').title = s.user_agent || '';
        tr.classList.toggle('is-watched', s.watchers > 0);
        tr.classList.toggle('is-watch', Boolean(s.watch_of));
    }
    for (const tr of [...liveBody.rows]) {
        if (!seen.has(tr.dataset.sessionId)) {
            tr.remove();
        }
    }
    const users = sessions.filter((s) => !s.watch_of).length;
    liveCount.textContent = `${users} live`;
    liveEmpty.hidden = sessions.length > 0;
}

function renderRecent(sessions) {
    const rows = sessions.map((s) => {
        const tr = document.createElement('tr');
        tr.dataset.sessionId = s.id;
        const values = [s.user, s.desktop, s.client_ip, clock(s.started_at), clock(s.ended_at),
            `${bytes(s.bytes_up)} / ${bytes(s.bytes_down)}`, s.close_reason || '—'];
        values.forEach((v, i) => {
            const td = document.createElement('td');
            td.textContent = v;
            if (i === 5) {
                td.className = 'num nowrap';
            } else if (i === 6) {
                td.className = 'detail close-reason';
            }
            tr.appendChild(td);
        });
        return tr;
    });
    recentBody.replaceChildren(...rows);
    recentEmpty.hidden = sessions.length > 0;
}

// The event stream

function setStream(textContent, ok) {
    streamState.textContent = textContent;
    streamState.classList.toggle('tag-ok', ok);
    streamState.classList.toggle('tag-warn', !ok);
}

const events = new EventSource(root.dataset.eventsUrl);
events.addEventListener('snapshot', (e) => {
    const data = JSON.parse(e.data);
    renderLive(data.live);
    renderRecent(data.recent);
    if (data.bridges) {
        const mib = (data.bridges.rss_bytes / 1048576).toFixed(0);
        bridgeStats.textContent = `RDP bridges: ${data.bridges.count}` +
            (data.bridges.count ? ` (${mib} MiB, ${data.bridges.cpu_seconds} s CPU)` : '');
    }
    root.dataset.updatedAt = String(data.now);
    setStream('live', true);
});
events.addEventListener('error', () => setStream('reconnecting…', false));
window.addEventListener('pagehide', () => events.close());

// Actions

const ACTIONS = {
    disconnect: {
        title: 'Disconnect', label: 'Reason shown to the user', field: 'reason',
        submit: 'Disconnect', done: 'Disconnected.', required: false,
    },
    message: {
        title: 'Send a message', label: 'Message shown to the user', field: 'text',
        submit: 'Send', done: 'Message sent.', required: true,
    },
};
let pending = null; // {action, id}

function openDialog(action, id) {
    const a = ACTIONS[action];
    const tr = liveBody.querySelector(`tr[data-session-id="${CSS.escape(id)}"]`);
    const who = tr ? `${tr.querySelector('[data-col="user"]').textContent} on `
        + `${tr.querySelector('[data-col="desktop"]').textContent}` : id;
    pending = {action, id};
    title.textContent = a.title;
    label.textContent = a.label;
    submit.textContent = a.submit;
    submit.classList.toggle('button-danger', action === 'disconnect');
    text.required = a.required;
    text.value = '';
    target.textContent = who;
    actionError.hidden = true;
    dialog.showModal();
    text.focus();
}

async function post(action, id, body) {
    const resp = await fetch(`/admin/sessions/${encodeURIComponent(id)}/${action}`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: {
            'Content-Type': 'application/json',
            'Accept': 'application/json',
            'X-CSRF-Token': csrfToken,
        },
        body: JSON.stringify(body),
    });
    if (!resp.ok) {
        let reason = `${resp.status} ${resp.statusText}`;
        try {
            reason = (await resp.json()).error || reason;
        } catch {
            // not JSON
        }
        throw new Error(reason);
    }
}

liveBody.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (b && ACTIONS[b.dataset.action]) {
        openDialog(b.dataset.action, b.dataset.sessionId);
    }
});

form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!pending) {
        return;
    }
    const {action, id} = pending;
    const a = ACTIONS[action];
    submit.disabled = true;
    try {
        await post(action, id, {[a.field]: text.value});
        dialog.close();
        pending = null;
        result.textContent = a.done;
        result.hidden = false;
    } catch (err) {
        actionError.textContent = err.message;
        actionError.hidden = false;
    } finally {
        submit.disabled = false;
    }
});

cancel.addEventListener('click', () => {
    pending = null;
    dialog.close();
});
