"""asyncssh, imported once for the whole gateway without its import-time warning.

asyncssh still imports cryptography's DSA support, which warns on import
(CryptographyDeprecationWarning, "DSA is deprecated"); every command and the server would print
it. Deskgate never uses DSA keys.
"""

from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

__all__ = ["asyncssh"]

# asyncssh logs every connection and command at INFO (a command's whole text): only its
# warnings reach the gateway's log.
logging.getLogger("asyncssh").setLevel(logging.WARNING)
