// What noVNC shows, counted in the page (bench/rdp.py adds this before any page script runs).
//
// noVNC draws every update into its back buffer (the full-size canvas that is not in the
// document: fillRect, putImageData, drawImage for decoded images and CopyRect) and flips it to
// the visible canvas. At each animation frame that had draws, the region they covered is read
// back from the back buffer and compared with what it held at the previous frame:
//
// - ``changed``: pixels whose value differs from the previous frame. A pixel redrawn with the
//   same value does not count; a pixel changed twice between two frames counts once, as a
//   person can see it change once. "Full screens/s" = changed pixels per second / canvas area.
// - ``drawn``: the union of the rectangles drawn between two frames (changed or not).
//
// ``window.__deskgateDrawn``: reset() starts a window; read() returns its figures. ``firstFrame``:
// ms from the navigation start (the click) to the moment the pixels drawn since then first
// cover the whole canvas.
(() => {
    const state = {
        ctx: null, w: 0, h: 0, prev: null, mask: null, seen: null, seenCount: 0,
        rects: [], changed: 0, drawn: 0, frames: 0, changedFrames: 0, draws: 0, flips: 0,
        start: performance.now(), firstFrame: null, firstDraw: null, reading: false,
    };
    function note(ctx, x, y, w, h) {
        const c = ctx.canvas;
        if (c.isConnected && c.width >= 64) {
            state.flips++; // noVNC copies its back buffer to the visible canvas: once per update
        }
        if (state.reading || c.isConnected || c.width < 64 || c.height < 64) {
            return; // the visible canvas (its flips copy what is counted here), a cursor, or us
        }
        if (c.width !== state.w || c.height !== state.h || ctx !== state.ctx) {
            state.ctx = ctx;
            state.w = c.width;
            state.h = c.height;
            state.prev = new Uint32Array(c.width * c.height);
            state.mask = new Uint8Array(c.width * c.height);
            state.seen = new Uint8Array(c.width * c.height);
            state.seenCount = 0;
            state.rects = [];
        }
        state.draws++;
        if (state.firstDraw === null) {
            state.firstDraw = performance.now();
        }
        state.rects.push(x | 0, y | 0, Math.ceil(w), Math.ceil(h));
    }
    // Marks the rectangles in ``mask`` (cleared first when ``fresh``): the newly marked count
    // and the bounding box.
    function union(mask, W, H, rects, fresh) {
        if (fresh) {
            mask.fill(0);
        }
        let n = 0;
        let bx0 = W, by0 = H, bx1 = 0, by1 = 0;
        for (let i = 0; i < rects.length; i += 4) {
            const x0 = Math.max(0, rects[i]);
            const y0 = Math.max(0, rects[i + 1]);
            const x1 = Math.min(W, rects[i] + rects[i + 2]);
            const y1 = Math.min(H, rects[i + 1] + rects[i + 3]);
            if (x1 <= x0 || y1 <= y0) {
                continue;
            }
            bx0 = Math.min(bx0, x0); by0 = Math.min(by0, y0);
            bx1 = Math.max(bx1, x1); by1 = Math.max(by1, y1);
            for (let y = y0; y < y1; y++) {
                const row = y * W;
                for (let p = row + x0; p < row + x1; p++) {
                    if (mask[p] === 0) {
                        mask[p] = 1;
                        n++;
                    }
                }
            }
        }
        return [n, bx0, by0, bx1, by1];
    }
    function compare(x0, y0, x1, y1) {
        const W = state.w;
        state.reading = true;
        const img = state.ctx.getImageData(x0, y0, x1 - x0, y1 - y0);
        state.reading = false;
        const now = new Uint32Array(img.data.buffer);
        const prev = state.prev;
        const mask = state.mask;
        const bw = x1 - x0;
        let n = 0;
        for (let y = y0; y < y1; y++) {
            const row = y * W;
            const src = (y - y0) * bw - x0;
            for (let p = row + x0; p < row + x1; p++) {
                if (mask[p] !== 0) {
                    const v = now[src + p - row];
                    if (v !== prev[p]) {
                        prev[p] = v;
                        n++;
                    }
                }
            }
        }
        return n;
    }
    function tick() {
        state.frames++;
        if (state.rects.length && state.ctx) {
            const [drawn, x0, y0, x1, y1] = union(state.mask, state.w, state.h, state.rects, true);
            state.drawn += drawn;
            if (drawn) {
                const changed = compare(x0, y0, x1, y1);
                state.changed += changed;
                if (changed) {
                    state.changedFrames++;
                }
            }
            if (state.firstFrame === null) {
                state.seenCount += union(state.seen, state.w, state.h, state.rects, false)[0];
                if (state.seenCount >= state.w * state.h) {
                    state.firstFrame = performance.now();
                }
            }
        }
        state.rects = [];
        requestAnimationFrame(tick);
    }
    requestAnimationFrame(tick);

    const P = CanvasRenderingContext2D.prototype;
    const fillRect = P.fillRect;
    P.fillRect = function (x, y, w, h) {
        note(this, x, y, w, h);
        return fillRect.apply(this, arguments);
    };
    const putImageData = P.putImageData;
    P.putImageData = function (img, x, y, dx, dy, dw, dh) {
        if (arguments.length >= 7) {
            note(this, x + dx, y + dy, dw, dh);
        } else {
            note(this, x, y, img.width, img.height);
        }
        return putImageData.apply(this, arguments);
    };
    const drawImage = P.drawImage;
    P.drawImage = function (img, ...a) {
        if (a.length === 2) {
            note(this, a[0], a[1], img.width, img.height);
        } else if (a.length === 4) {
            note(this, a[0], a[1], a[2], a[3]);
        } else if (a.length === 8) {
            note(this, a[4], a[5], a[6], a[7]);
        }
        return drawImage.apply(this, arguments);
    };

    window.__deskgateDrawn = {
        reset() {
            state.changed = state.drawn = state.frames = state.changedFrames = state.draws = state.flips = 0;
            state.start = performance.now();
        },
        read() {
            return {
                seconds: (performance.now() - state.start) / 1000,
                changed: state.changed, drawn: state.drawn, frames: state.frames,
                changedFrames: state.changedFrames, draws: state.draws, flips: state.flips, width: state.w,
                height: state.h, firstFrame: state.firstFrame, firstDraw: state.firstDraw,
            };
        },
    };
})();
