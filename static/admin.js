// Deskgate admin: the live sessions dashboard.
//
// The gateway streams a full snapshot every second (and at once when a session starts or
// closes) as server-sent events; rows are updated in place, keyed by session id, so buttons
// stay where they are while the figures change. Actions are POSTs with the CSRF token.

const root = document.getElementById('sessions-dashboard');
const csrfToken = root.dataset.csrf;
const liveTable = document.getElementById('live-sessions');
const recentTable = document.getElementById('recent-sessions');
const failedTable = document.getElementById('failed-sessions');
const liveBody = liveTable.tBodies[0];
const recentBody = recentTable.tBodies[0];
const failedBody = failedTable.tBodies[0];
const liveEmpty = document.getElementById('live-empty');
const recentEmpty = document.getElementById('recent-empty');
const failedEmpty = document.getElementById('failed-empty');
const liveCount = document.getElementById('live-count');
const bridgeStats = document.getElementById('bridge-stats');
const streamState = document.getElementById('stream-state');
const search = document.getElementById('session-search');
const filterForm = document.getElementById('sessions-filter');
const filterCount = document.getElementById('filter-count');
const pageNewer = document.getElementById('page-newer');
const pageOlder = document.getElementById('page-older');
const pageLabel = document.getElementById('page-label');
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

// Columns of each table, in the order of its headers (templates/admin_sessions.html). A
// column's cell gets data-col=<name>; data-sort holds the value it sorts by.
const LIVE_COLUMNS = ['session', 'user', 'desktop', 'address', 'protocol', 'client_ip',
    'browser', 'started', 'duration', 'to_desktop', 'to_browser', 'rtt', 'idle', 'watchers'];
const RECENT_COLUMNS = ['session', 'user', 'desktop', 'address', 'client_ip', 'browser',
    'started', 'ended', 'duration', 'to_desktop', 'to_browser', 'close_reason'];
const FAILED_COLUMNS = ['session', 'user', 'desktop', 'address', 'client_ip', 'browser',
    'started', 'close_reason'];
const NUMERIC = new Set(['duration', 'to_desktop', 'to_browser', 'rtt', 'idle', 'watchers']);

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

// One cell: {text, sort, href, title, code}
function link(textContent, href) {
    return {text: textContent, sort: textContent.toLowerCase(), href};
}

function common(s) {
    return {
        session: {text: s.id.slice(0, 8), sort: s.id, title: s.id, code: true},
        user: link(s.user, s.user_id === null ? null : `/admin/users/${s.user_id}`),
        desktop: link(s.desktop, s.desktop_id === null ? null : `/admin/desktops/${s.desktop_id}`),
        address: {text: s.address || '—', sort: s.address || '', code: Boolean(s.address)},
        client_ip: {text: s.client_ip || '—', sort: s.client_ip || ''},
        browser: {text: s.browser || (s.user_agent ? 'unknown' : '—'), sort: s.browser || '',
            title: s.user_agent || ''},
        started: {text: clock(s.started_at), sort: s.started_at},
    };
}

function liveCells(s) {
    return {
        ...common(s),
        protocol: {text: s.watch_of ? `${s.protocol.toUpperCase()} · watch`
            : s.protocol.toUpperCase()},
        duration: {text: duration(s.duration_s), sort: s.duration_s},
        to_desktop: {text: `${bytes(s.bytes_up)} · ${bytes(s.rate_up_bps)}/s`, sort: s.bytes_up,
            title: 'sent to the desktop in total · current throughput'},
        to_browser: {text: `${bytes(s.bytes_down)} · ${bytes(s.rate_down_bps)}/s`,
            sort: s.bytes_down, title: 'sent to the browser in total · current throughput'},
        rtt: {text: s.rtt_ms === null ? '—' : `${s.rtt_ms} ms`, sort: s.rtt_ms ?? -1},
        idle: {text: duration(s.idle_s), sort: s.idle_s ?? -1},
        watchers: {text: String(s.watchers), sort: s.watchers},
    };
}

function closedCells(s) {
    const lasted = s.ended_at ? s.ended_at - s.started_at : null;
    return {
        ...common(s),
        ended: {text: clock(s.ended_at), sort: s.ended_at || 0},
        duration: {text: duration(lasted), sort: lasted ?? -1},
        to_desktop: {text: bytes(s.bytes_up), sort: s.bytes_up},
        to_browser: {text: bytes(s.bytes_down), sort: s.bytes_down},
        close_reason: {text: s.close_reason || '—'},
    };
}

function fill(td, cell) {
    const shown = cell.text ?? '';
    const key = `${shown}\u0000${cell.href || ''}\u0000${cell.title || ''}`;
    td.dataset.sort = String(cell.sort ?? shown.toLowerCase());
    if (td.dataset.key === key) {
        return;
    }
    td.dataset.key = key;
    let inner;
    if (cell.href) {
        inner = document.createElement('a');
        inner.className = 'row-link';
        inner.href = cell.href;
        inner.textContent = shown;
    } else if (cell.code) {
        inner = document.createElement('code');
        inner.textContent = shown;
    } else {
        inner = document.createTextNode(shown);
    }
    td.replaceChildren(inner);
    if (cell.title) {
        td.title = cell.title;
    } else {
        td.removeAttribute('title');
    }
}

function newCells(tr, columns) {
    for (const col of columns) {
        const td = document.createElement('td');
        td.dataset.col = col;
        if (NUMERIC.has(col)) {
            td.className = 'num nowrap';
        } else if (col === 'close_reason') {
            td.className = 'detail close-reason';
        } else if (col === 'started' || col === 'ended') {
            td.className = 'nowrap';
        }
        tr.appendChild(td);
    }
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
    newCells(tr, LIVE_COLUMNS);
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

// Filtering and sorting ------------------------------------------------------------------

function matches(tr) {
    const needle = search.value.trim().toLowerCase();
    if (!needle) {
        return true;
    }
    const hay = [...tr.cells].map((td) => `${td.textContent} ${td.title || ''} `
        + `${td.dataset.sort || ''}`).join(' ').toLowerCase();
    return hay.includes(needle);
}

const sorting = new Map(); // table -> {col, dir}

function compare(a, b, numeric) {
    if (numeric) {
        return Number(a) - Number(b);
    }
    return a.localeCompare(b, undefined, {numeric: true, sensitivity: 'base'});
}

function arrange(table) {
    const body = table.tBodies[0];
    let shown = 0;
    for (const tr of body.rows) {
        tr.hidden = !matches(tr);
        shown += tr.hidden ? 0 : 1;
    }
    const order = sorting.get(table);
    if (order) {
        const numeric = ['duration', 'to_desktop', 'to_browser', 'rtt', 'idle', 'watchers',
            'started', 'ended'].includes(order.col);
        const rows = [...body.rows];
        const key = (tr) => tr.querySelector(`td[data-col="${order.col}"]`)?.dataset.sort ?? '';
        rows.sort((x, y) => order.dir * compare(key(x), key(y), numeric));
        if (rows.some((tr, i) => body.rows[i] !== tr)) {
            body.append(...rows);
        }
    }
    return shown;
}

function arrangeAll() {
    const live = arrange(liveTable);
    arrange(recentTable);
    arrange(failedTable);
    const total = liveBody.rows.length;
    filterCount.textContent = search.value.trim()
        ? `${live} of ${total} live sessions match` : '';
    liveEmpty.hidden = live > 0;
    liveEmpty.textContent = total ? 'No live session matches the filter.' : 'No live sessions.';
}

function makeSortable(table, columns) {
    const headers = table.tHead.rows[0].cells;
    columns.forEach((col, i) => {
        const th = headers[i];
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'sort-button';
        b.textContent = th.textContent;
        b.dataset.col = col;
        th.replaceChildren(b);
        th.setAttribute('aria-sort', 'none');
        b.addEventListener('click', () => {
            const now = sorting.get(table);
            const dir = now && now.col === col ? -now.dir : 1;
            sorting.set(table, {col, dir});
            for (const other of headers) {
                if (other.hasAttribute('aria-sort')) {
                    other.setAttribute('aria-sort', 'none');
                }
            }
            th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
            arrange(table);
        });
    });
}

makeSortable(liveTable, LIVE_COLUMNS);
makeSortable(recentTable, RECENT_COLUMNS);
makeSortable(failedTable, FAILED_COLUMNS);

// Rendering ----------------------------------------------------------------------------------

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
            fill(tr.querySelector(`td[data-col="${col}"]`), cells[col]);
        }
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
}

// The audit trail around one session: its user and desktop, from its start to its end.
function auditLink(s) {
    const iso = (t) => new Date(t * 1000).toISOString().slice(0, 19);
    const q = new URLSearchParams({user: s.user, desktop: s.desktop,
        from: iso(Math.floor(s.started_at) - 1), to: iso(Math.ceil(s.ended_at || s.started_at) + 2)});
    const a = document.createElement('a');
    a.className = 'button button-small audit-link';
    a.href = `/admin/audit?${q}`;
    a.textContent = 'Audit';
    a.title = 'audit events of this session';
    return a;
}

function renderClosed(body, empty, sessions, columns, withAudit) {
    const rows = sessions.map((s) => {
        const tr = document.createElement('tr');
        tr.dataset.sessionId = s.id;
        newCells(tr, columns);
        const cells = closedCells(s);
        for (const col of columns) {
            fill(tr.querySelector(`td[data-col="${col}"]`), cells[col]);
        }
        if (withAudit) {
            const td = document.createElement('td');
            td.className = 'actions-col';
            td.appendChild(auditLink(s));
            tr.appendChild(td);
        }
        return tr;
    });
    body.replaceChildren(...rows);
    empty.hidden = sessions.length > 0;
}

// The event stream: one page of history and the filter are its query ----------------------

let page = 1;
let events = null;

function setStream(textContent, ok) {
    streamState.textContent = textContent;
    streamState.classList.toggle('tag-ok', ok);
    streamState.classList.toggle('tag-warn', !ok);
}

function onSnapshot(e) {
    const data = JSON.parse(e.data);
    renderLive(data.live);
    renderClosed(recentBody, recentEmpty, data.recent, RECENT_COLUMNS, true);
    renderClosed(failedBody, failedEmpty, data.failed || [], FAILED_COLUMNS, false);
    recentEmpty.textContent = data.search ? 'No closed session matches the filter.'
        : (data.page > 1 ? 'No older sessions.' : 'No closed sessions yet.');
    pageLabel.textContent = `Page ${data.page}`;
    pageNewer.disabled = data.page <= 1;
    pageOlder.disabled = !data.has_older;
    arrangeAll();
    if (data.bridges) {
        const mib = (data.bridges.rss_bytes / 1048576).toFixed(0);
        bridgeStats.textContent = `RDP bridges: ${data.bridges.count}` +
            (data.bridges.count ? ` (${mib} MiB, ${data.bridges.cpu_seconds} s CPU)` : '');
    }
    root.dataset.updatedAt = String(data.now);
    root.dataset.page = String(data.page);
    root.dataset.search = data.search;
    setStream('live', true);
}

function listen() {
    if (events) {
        events.close();
    }
    const q = new URLSearchParams({page: String(page), q: search.value.trim()});
    events = new EventSource(`${root.dataset.eventsUrl}?${q}`);
    events.addEventListener('snapshot', onSnapshot);
    events.addEventListener('error', () => setStream('reconnecting…', false));
}

let typing = null;
search.addEventListener('input', () => {
    arrangeAll(); // live rows at once; history and failed attempts from the server
    clearTimeout(typing);
    typing = setTimeout(() => {
        page = 1;
        listen();
    }, 300);
});
filterForm.addEventListener('submit', (e) => {
    e.preventDefault();
    page = 1;
    listen();
});
pageNewer.addEventListener('click', () => {
    page = Math.max(1, page - 1);
    listen();
});
pageOlder.addEventListener('click', () => {
    page += 1;
    listen();
});
window.addEventListener('pagehide', () => events && events.close());
listen();

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
