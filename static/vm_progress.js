// Start on connect: while the gateway starts a stopped desktop VM (the connect request waits
// for it), this shows the stages in the status overlay — starting the VM, waiting for its
// screen, connecting — with how long it has taken and how long it usually takes.
//
// watchStart(url, box) polls the desktop's progress until the returned function is called
// with the stage it ended in ('connecting', or null on a failure).

const POLL_MS = 500;

function seconds(s) {
    return `${Math.max(0, Math.round(s))} s`;
}

function render(box, progress) {
    let list = box.querySelector('.vm-stages');
    if (!list) {
        list = document.createElement('ol');
        list.className = 'vm-stages';
        list.id = 'vm-stages';
        box.append(list);
        const timing = document.createElement('p');
        timing.className = 'vm-timing';
        timing.id = 'vm-timing';
        box.append(timing);
    }
    const keys = progress.stages.map(([key]) => key);
    const current = keys.indexOf(progress.stage);
    list.replaceChildren(...progress.stages.map(([key, label], i) => {
        const item = document.createElement('li');
        item.textContent = label;
        item.dataset.stage = key;
        item.className = i < current ? 'done' : (i === current ? 'current' : 'todo');
        if (i === current) {
            item.setAttribute('aria-current', 'step');
        }
        return item;
    }));
    const timing = box.querySelector('.vm-timing');
    const parts = [];
    if (typeof progress.elapsed === 'number') {
        parts.push(`${seconds(progress.elapsed)} so far`);
    }
    parts.push(typeof progress.estimate === 'number'
        ? `this desktop usually takes about ${seconds(progress.estimate)} to start`
        : 'no estimate yet: this desktop has not been started here before');
    timing.textContent = progress.stage === 'connecting' ? '' : parts.join('; ') + '.';
}

export function watchStart(url, box, onStarting) {
    let stopped = false;
    let timer = null;
    let last = null;
    async function poll() {
        if (stopped) {
            return;
        }
        try {
            const resp = await fetch(url, {credentials: 'same-origin',
                                           headers: {'Accept': 'application/json'}});
            if (resp.ok) {
                const progress = await resp.json();
                if (!stopped && progress.vm && progress.stage) {
                    last = progress;
                    onStarting(progress);
                    render(box, progress);
                }
            }
        } catch {
            // the connect request reports a gateway that cannot be reached
        }
        if (!stopped) {
            timer = setTimeout(poll, POLL_MS);
        }
    }
    poll();
    return (endStage) => {
        stopped = true;
        clearTimeout(timer);
        if (last && endStage) {
            render(box, {...last, stage: endStage});
        } else if (!endStage) {
            box.querySelector('.vm-timing')?.remove();
        }
    };
}

export function clearStages(box) {
    box.querySelector('.vm-stages')?.remove();
    box.querySelector('.vm-timing')?.remove();
}
