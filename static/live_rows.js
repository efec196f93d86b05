// Admin pages whose rows follow the gateway's event stream (desktop VMs, kiosks, SSH hosts):
// each sends, on every change, the whole list of its things; every element of the page marked
// with a thing's id is updated in place from it. What each page shows of a thing is its own
// (``update``); the stream, the "live" tag, the note about things added elsewhere and the
// things that are gone are the same everywhere, here.

const STATE_CLASS = /^state-/;

export function setText(el, text) {
    if (el.textContent !== text) {
        el.textContent = text;
    }
}

// The element's state-<state> class, and only that one.
export function setStateClass(el, state) {
    for (const name of [...el.classList]) {
        if (STATE_CLASS.test(name)) {
            el.classList.remove(name);
        }
    }
    el.classList.add(`state-${state}`);
}

// As the pages write it: 2025-01-31 13:45:07, UTC.
export function when(at) {
    if (at === null || at === undefined) {
        return '';
    }
    return new Date(at * 1000).toISOString().slice(0, 19).replace('T', ' ');
}

// url: the event stream; event: its event's name, whose data has the list under ``list``;
// marked: the selector of the elements to update; idKey: the dataset key of their thing's id
// (``vmId`` for data-vm-id); update(el, thing): one element from its thing; gone(id): the thing
// of an id no longer listed; streamState, newNote: the ids of the "live" tag and of the note
// offering a reload. Nothing is followed on a page with neither.
export function followRows({url, event, list, marked, idKey, update, gone, streamState,
    newNote}) {
    const tag = document.getElementById(streamState);
    const note = document.getElementById(newNote);

    function setStream(text, ok) {
        if (!tag) {
            return;
        }
        tag.hidden = false;
        tag.textContent = text;
        tag.classList.toggle('tag-ok', ok);
        tag.classList.toggle('tag-warn', !ok);
    }

    function apply(data) {
        const byId = new Map(data[list].map((thing) => [String(thing.id), thing]));
        const onPage = new Set();
        for (const el of document.querySelectorAll(marked)) {
            const id = el.dataset[idKey];
            onPage.add(id);
            update(el, byId.get(id) || gone(id));
        }
        // One made or removed elsewhere: the list (which shows them all) offers a reload.
        if (note) {
            note.hidden = [...byId.keys()].every((id) => onPage.has(id));
        }
        setStream('live', true);
    }

    if (!document.querySelector(marked) && !note) {
        return;
    }
    const events = new EventSource(url);
    events.addEventListener(event, (e) => {
        try {
            apply(JSON.parse(e.data));
        } catch (err) {
            setStream('not live', false);
            throw err;
        }
    });
    events.addEventListener('error', () => setStream('reconnecting…', false));
    window.addEventListener('pagehide', () => events.close());
}
