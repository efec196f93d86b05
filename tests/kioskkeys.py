"""A kiosk's device key as a browser makes it (WebCrypto ECDSA P-256): its public half as SPKI
(DER, base64) and signatures in WebCrypto's format (r || s, 32 bytes each, base64)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class DeviceKey:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public = base64.b64encode(self._key.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()

    def sign(self, message: str) -> str:
        """``message`` signed with SHA-256, as WebCrypto's ``sign`` returns it."""
        der = self._key.sign(message.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()

    def der_signature(self, message: str) -> str:
        """The same signature in DER (what WebCrypto never sends), base64."""
        return base64.b64encode(self._key.sign(message.encode(),
                                               ec.ECDSA(hashes.SHA256()))).decode()
