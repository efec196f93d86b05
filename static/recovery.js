// Deskgate: copy the recovery codes to the clipboard, one per line.
//
// The Copy button shows only where the asynchronous clipboard API is available (a secure
// context: HTTPS or localhost); elsewhere the codes can still be downloaded or selected.

const button = document.getElementById('copy-codes');
const status = document.getElementById('copy-status');

function codes() {
    return Array.from(document.querySelectorAll('.recovery-code'), (c) => c.textContent.trim());
}

if (button && navigator.clipboard && window.isSecureContext) {
    button.hidden = false;
    button.addEventListener('click', async () => {
        try {
            await navigator.clipboard.writeText(`${codes().join('\n')}\n`);
            status.textContent = 'Copied to the clipboard.';
        } catch (err) {
            status.textContent = 'The browser did not allow copying: select the codes instead.';
        }
    });
}
