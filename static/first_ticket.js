// The first ticket, asked for as soon as the page is parsed: a classic script runs before the
// viewer's modules (noVNC, client.js) have loaded, so the gateway starts preparing the desktop
// (an RDP bridge takes most of a second) while they load. client.js takes this request for its
// first try (``takeFirstTicket``) and asks for every later one itself. Not for a stopped desktop
// VM, whose start client.js follows with a progress view.
(() => {
    const root = document.getElementById('deskgate-client');
    const screen = document.getElementById('screen');
    if (!root || !screen || root.dataset.progressUrl || !root.dataset.connectUrl) {
        return;
    }
    const area = screen.getBoundingClientRect();
    const body = {
        width: Math.round(area.width) || window.innerWidth,
        height: Math.round(area.height) || window.innerHeight,
    };
    window.deskgateFirstTicket = fetch(root.dataset.connectUrl, {
        method: 'POST',
        credentials: 'same-origin',
        headers: {
            'X-CSRF-Token': root.dataset.csrf,
            'Accept': 'application/json',
            'Content-Type': 'application/json',
        },
        body: JSON.stringify(body),
    });
})();
