// What noVNC draws, counted in the page (bench/rdp.py adds this before any page script runs).
//
// Every drawing call on noVNC's back buffer (the full-size canvas that is not in the document:
// fillRect, putImageData, drawImage for decoded images and CopyRect) is a rectangle of pixels
// that reaches the visible canvas at its next flip. At each animation frame the union of the
// rectangles drawn since the previous frame is counted once: a pixel drawn twice between two
// frames is one changed pixel, as a person can see it change once. "Full screens/s" is that
// count per second divided by the canvas area.
//
// ``window.__deskgateDrawn``: reset() starts a window; read() returns its figures. ``firstFrame``:
// ms from the navigation start (the click) to the moment the pixels drawn since then first
// cover the whole canvas.
(() => {
    const state = {
        rects: [], w: 0, h: 0, mask: null, seen: null, seenCount: 0,
        pixels: 0, frames: 0, changedFrames: 0, draws: 0, start: performance.now(),
        firstFrame: null,
    };
    function note(ctx, x, y, w, h) {
        const c = ctx.canvas;
        if (c.isConnected || c.width < 64 || c.height < 64) {
            return; // the visible canvas (its flips copy what is counted here) or a cursor
        }
        if (c.width !== state.w || c.height !== state.h) {
            state.w = c.width;
            state.h = c.height;
            state.mask = new Uint8Array(c.width * c.height);
            state.seen = new Uint8Array(c.width * c.height);
            state.seenCount = 0;
        }
        state.draws++;
        state.rects.push(x | 0, y | 0, Math.ceil(w), Math.ceil(h));
    }
    function union(mask, W, H, rects, fresh) {
        if (fresh) {
            mask.fill(0);
        }
        let n = 0;
        for (let i = 0; i < rects.length; i += 4) {
            const x0 = Math.max(0, rects[i]);
            const y0 = Math.max(0, rects[i + 1]);
            const x1 = Math.min(W, rects[i] + rects[i + 2]);
            const y1 = Math.min(H, rects[i + 1] + rects[i + 3]);
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
        return n;
    }
    function tick() {
        state.frames++;
        if (state.rects.length && state.mask) {
            const changed = union(state.mask, state.w, state.h, state.rects, true);
            state.pixels += changed;
            if (changed) {
                state.changedFrames++;
            }
            if (state.firstFrame === null) {
                state.seenCount += union(state.seen, state.w, state.h, state.rects, false);
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
            state.pixels = state.frames = state.changedFrames = state.draws = 0;
            state.start = performance.now();
        },
        read() {
            return {
                seconds: (performance.now() - state.start) / 1000,
                pixels: state.pixels, frames: state.frames, changedFrames: state.changedFrames,
                draws: state.draws, width: state.w, height: state.h, firstFrame: state.firstFrame,
            };
        },
    };
})();
