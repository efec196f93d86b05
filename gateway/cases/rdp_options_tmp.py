"""RDP desktop options, checked (moved verbatim from gateway/services.py).

Temporary home: this module moves to gateway/rdp/options.py with the RDP package.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..errors import BadRequest
from ..keyboards import DEFAULT_LAYOUT, klid, layout_of
from ..proxy.rdp import CERT_POLICIES, SECURITY_MODES

RDP_SECURITY = SECURITY_MODES  # what the bridge accepts is what an admin may choose
RDP_CERT_POLICIES = CERT_POLICIES
MAX_CA_PEM = 64 * 1024
RDP_CREDENTIALS = ("shared", "per_user")


def rdp_options(options: Mapping[str, str]) -> dict[str, str]:
    """Checked RDP options: username, domain, security, cert_policy, cert_fingerprint, cert_ca,
    credentials, keyboard_layout.

    ``credentials`` is "shared" (the default: everyone signs in with the desktop's one account,
    so a user name is required) or "per_user" (each person signs in with their own account on
    that server, entered once and stored encrypted, or asked at connect).

    A new desktop's certificate policy is "ignore" unless a fingerprint is pinned or a CA is
    given ("ca": the server's certificate must be issued by ``cert_ca``, PEM, for the desktop's
    host name); the admin pages show it, so the choice is never silent.

    ``keyboard_layout`` is the layout the server maps the browser's scancodes with: a short
    name ("de") or a hexadecimal layout id, stored as "0x00000407"; US English, the
    default, is stored empty.
    """
    unknown = set(options) - {"username", "domain", "security", "cert_policy", "cert_fingerprint",
                              "cert_ca", "credentials", "keyboard_layout"}
    if unknown:
        raise BadRequest(f"unknown RDP option {sorted(unknown)[0]!r}")
    credentials = options.get("credentials", "shared")
    if credentials not in RDP_CREDENTIALS:
        raise BadRequest(f"RDP credentials are one of {', '.join(RDP_CREDENTIALS)}")
    username = options.get("username", "").strip()
    if credentials == "per_user":
        username = ""  # each person's own account; the desktop has none
    elif not username or len(username) > 104 or not username.isprintable():
        raise BadRequest("an RDP desktop needs a user name (--user)")
    security = options.get("security", "negotiate")
    if security not in RDP_SECURITY:
        raise BadRequest(f"RDP security is one of {', '.join(RDP_SECURITY)}")
    fingerprint = options.get("cert_fingerprint", "").replace(":", "").strip().lower()
    ca = options.get("cert_ca", "").strip()
    policy = options.get("cert_policy") or ("fingerprint" if fingerprint else
                                            "ca" if ca else "ignore")
    if policy not in RDP_CERT_POLICIES:
        raise BadRequest(f"RDP certificate policy is one of {', '.join(RDP_CERT_POLICIES)}")
    if policy == "fingerprint" and not (len(fingerprint) == 64
                                        and all(c in "0123456789abcdef" for c in fingerprint)):
        raise BadRequest("a pinned certificate needs its SHA-256 fingerprint (64 hex digits)")
    # Only the chosen policy's material is kept.
    ca = _ca_pem(ca) if policy == "ca" else ""
    fingerprint = fingerprint if policy == "fingerprint" else ""
    domain = _rdp_domain(options.get("domain", ""))
    try:
        code = layout_of(options.get("keyboard_layout", "").strip())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    layout = "" if code == DEFAULT_LAYOUT else klid(code)  # one spelling of the default
    return {"username": username, "domain": domain, "security": security,
            "cert_policy": policy, "cert_fingerprint": fingerprint, "cert_ca": ca,
            "credentials": credentials,
            "keyboard_layout": layout}


def _ca_pem(text: str) -> str:
    """The CA certificate(s) as PEM, checked: certificates only, at most 64 KiB."""
    if not text:
        raise BadRequest("the ca certificate policy needs the CA's certificate (PEM)")
    if len(text) > MAX_CA_PEM:
        raise BadRequest("the CA certificates are at most 64 KiB of PEM")
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise BadRequest("the CA certificate is not a PEM certificate"
                         " (-----BEGIN CERTIFICATE----- ...)") from None
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def ca_names(pem: str) -> str:
    """The subjects' common names of PEM certificates, for the admin pages ("" when none)."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode()) if pem else []
    except ValueError:
        return ""
    names = [a.value for c in certs for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return ", ".join(str(n) for n in names)


def _rdp_domain(domain: str) -> str:
    domain = domain.strip()
    if len(domain) > 64 or not domain.isprintable():
        raise BadRequest("the RDP domain is at most 64 printable characters")
    return domain


def rdp_account(username: str, domain: str, password: str) -> tuple[str, str, str]:
    """A person's own account on a per-user RDP desktop, checked: (username, domain, password)."""
    username = username.strip()
    if not username or len(username) > 104 or not username.isprintable():
        raise BadRequest("enter the user name of your account on this desktop")
    if not password or len(password) > 256 or any(c in password for c in "\r\n\0"):
        raise BadRequest("enter the password of your account on this desktop"
                         " (at most 256 characters, no line breaks)")
    return username, _rdp_domain(domain), password
