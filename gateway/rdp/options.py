"""A desktop's RDP options, listed once (``OPTIONS``) and walked by everything that needs them.

Each ``RdpOption`` says its stored name (also its key in the API's ``rdp`` object and, as
``rdp_<name>``, its admin form field), its help text, its choices and default, its checker, its
``deskgate desktop add/set`` flag (``Cli``) and its admin form field (``Field``). The checks
(``rdp_options``), the CLI parser, the API schema and the admin form are built from this table,
the way guacamole-server's RDP settings list their parameters once; adding an option is one
entry here (and its use in ``gateway.rdp.target``/``freerdp``).

``credentials`` is "shared" (the default: everyone signs in with the desktop's one account, so a
user name is required) or "per_user" (each person signs in with their own account on that
server, entered once and stored encrypted, or asked at connect).

A new desktop's certificate policy is "ignore" unless a fingerprint is pinned or a CA is given
("ca": the server's certificate must be issued by ``cert_ca``, PEM, for the desktop's host
name); the admin pages show it, so the choice is never silent.

``keyboard_layout`` is the layout the server maps the browser's scancodes with: a short name
("de") or a hexadecimal layout id, stored as "0x00000407"; US English, the default, is stored
empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.errors import BadRequest
from gateway.keyboards import DEFAULT_LAYOUT, LAYOUTS, klid, layout_of
from gateway.rdp.target import CERT_POLICIES, SECURITY_MODES

RDP_SECURITY = SECURITY_MODES  # what the bridge accepts is what an admin may choose
RDP_CERT_POLICIES = CERT_POLICIES
RDP_CREDENTIALS = ("shared", "per_user")
MAX_CA_PEM = 64 * 1024

# check(value given, every option given, the options checked so far) -> the value stored.
Check = Callable[[str, Mapping[str, str], Mapping[str, str]], str]


@dataclass(frozen=True)
class Cli:
    """An option's flag on ``deskgate desktop add`` and ``set``."""

    flag: str
    help: str
    metavar: str | None = None
    switch: str | None = None  # a flag without a value that sets the option to this value
    file: bool = False  # the flag names a file whose text is the value

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class Field:
    """An option's field on the admin pages ("Add a desktop"; the desktop's page when
    ``RdpOption.editable``)."""

    id: str  # the control's id on "Add a desktop" ("new-rdp-..."); on a desktop's page "edit-rdp-..."
    label: str
    note: str = "(RDP only)"
    kind: str = "text"  # text | select | textarea
    show: str = "rdp"  # when it applies (static/desktop_form.js): rdp, or rdp-shared
    hint: str = ""
    placeholder: str = ""
    narrow: bool = False
    # select: (value, label) pairs, made when the form is drawn; the selected one is the
    # option's value, or ``shown_default`` when it has none
    menu: Callable[[], list[tuple[str, str]]] | None = None
    shown_default: str = ""

    @property
    def edit_id(self) -> str:
        return "edit-" + self.id.removeprefix("new-")


@dataclass(frozen=True)
class RdpOption:
    name: str
    help: str  # for the API schema (and people reading this table)
    check: Check
    default: str = ""  # what is stored when the option is not given
    choices: tuple[str, ...] = ()  # the only values accepted (empty: any that ``check`` takes)
    cli: Cli | None = None
    form: Field | None = None
    editable: bool = False  # also on a desktop's page, after it was created

    @property
    def form_name(self) -> str:
        return f"rdp_{self.name}"

    def schema(self) -> dict[str, Any]:
        """The option in the API's JSON Schema."""
        out: dict[str, Any] = {"type": "string", "description": self.help}
        if self.choices:
            out["enum"] = list(self.choices)
        return out


# the checkers ----------------------------------------------------------------------------------
def _credentials(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    value = value or "shared"
    if value not in RDP_CREDENTIALS:
        raise BadRequest(f"RDP credentials are one of {', '.join(RDP_CREDENTIALS)}")
    return value


def _username(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    if checked["credentials"] == "per_user":
        return ""  # each person's own account; the desktop has none
    value = value.strip()
    if not value or len(value) > 104 or not value.isprintable():
        raise BadRequest("an RDP desktop needs a user name (--user)")
    return value


def rdp_domain(domain: str) -> str:
    """A Windows domain, checked: at most 64 printable characters once trimmed."""
    domain = domain.strip()
    if len(domain) > 64 or not domain.isprintable():
        raise BadRequest("the RDP domain is at most 64 printable characters")
    return domain


def _domain(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    return rdp_domain(value)


def _security(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    value = value or "negotiate"
    if value not in RDP_SECURITY:
        raise BadRequest(f"RDP security is one of {', '.join(RDP_SECURITY)}")
    return value


def _fingerprint_given(given: Mapping[str, str]) -> str:
    return given.get("cert_fingerprint", "").replace(":", "").strip().lower()


def _cert_policy(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    policy = value or ("fingerprint" if _fingerprint_given(given) else
                       "ca" if given.get("cert_ca", "").strip() else "ignore")
    if policy not in RDP_CERT_POLICIES:
        raise BadRequest(f"RDP certificate policy is one of {', '.join(RDP_CERT_POLICIES)}")
    return policy


def _cert_fingerprint(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    if checked["cert_policy"] != "fingerprint":
        return ""  # only the chosen policy's material is kept
    fingerprint = _fingerprint_given(given)
    if not (len(fingerprint) == 64 and all(c in "0123456789abcdef" for c in fingerprint)):
        raise BadRequest("a pinned certificate needs its SHA-256 fingerprint (64 hex digits)")
    return fingerprint


def _cert_ca(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    return ca_pem(value.strip()) if checked["cert_policy"] == "ca" else ""


def _keyboard_layout(value: str, given: Mapping[str, str], checked: Mapping[str, str]) -> str:
    try:
        code = layout_of(value.strip())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return "" if code == DEFAULT_LAYOUT else klid(code)  # one spelling of the default


def ca_pem(text: str) -> str:
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


def _layouts() -> list[tuple[str, str]]:
    return [(klid(c), label) for c, label in LAYOUTS.values()]


# the table: in the order they are checked, offered on the command line and on the form --------
OPTIONS: tuple[RdpOption, ...] = (
    RdpOption(
        "credentials", "shared: the desktop's one account, the default; per_user: each"
        " person's own account, entered once and stored encrypted, or asked at connect",
        _credentials, default="shared", choices=RDP_CREDENTIALS, editable=True,
        cli=Cli("--per-user-credentials", switch="per_user",
                help="rdp: each person signs in with their own account on the server"
                     " (entered once in the browser and stored encrypted; no --user)"),
        form=Field("new-rdp-credentials", "RDP accounts", kind="select", shown_default="shared",
                   menu=lambda: [("shared", "shared: everyone uses the desktop's account"),
                                 ("per_user", "per user: each person's own account on the"
                                              " server")],
                   hint="Per user: the user's own Windows account, entered once and stored"
                        " encrypted, or asked at connect. Leave the user name and password"
                        " empty.")),
    RdpOption(
        "username", "the account to sign in with (required unless credentials is per_user)",
        _username,
        cli=Cli("--user", help="rdp: the account to sign in with"),
        form=Field("new-rdp-user", "RDP user name", "(RDP only, shared)", show="rdp-shared")),
    RdpOption(
        "domain", "the account's domain (optional)", _domain,
        cli=Cli("--domain", help="rdp: the account's domain"),
        form=Field("new-rdp-domain", "RDP domain", "(RDP only, optional)")),
    RdpOption(
        "security", "the connection's security mode (default: negotiate)", _security,
        default="negotiate", choices=RDP_SECURITY,
        cli=Cli("--security", help="rdp: security mode (default: negotiate)"),
        form=Field("new-rdp-security", "RDP security", kind="select", narrow=True,
                   shown_default="negotiate", menu=lambda: [(m, m) for m in RDP_SECURITY])),
    RdpOption(
        "cert_policy", "how the server's certificate is checked: ignore, tofu (trust the first"
        " certificate seen, refuse a changed one), fingerprint or ca (default: ignore, or"
        " fingerprint/ca when cert_fingerprint/cert_ca is given)",
        _cert_policy, default="ignore", choices=RDP_CERT_POLICIES,
        cli=Cli("--cert", help="rdp: server certificate policy: ignore, tofu (trust the first"
                               " certificate seen, refuse a changed one), fingerprint or ca"
                               " (default: ignore, or fingerprint/ca when --cert-fingerprint/"
                               "--cert-ca is given)"),
        form=Field("new-rdp-cert-policy", "RDP certificate policy", kind="select",
                   narrow=True, menu=lambda: [
                       ("", "automatic"), *((p, p) for p in RDP_CERT_POLICIES)],
                   hint="Automatic: pinned when a fingerprint is given below, verified against"
                        " the CA when one is given, else not verified (ignore). Tofu trusts"
                        " the first certificate seen and refuses a changed one.")),
    RdpOption(
        "cert_fingerprint", "the pinned certificate's SHA-256 (hex, colons optional)",
        _cert_fingerprint,
        cli=Cli("--cert-fingerprint", metavar="SHA256", help="rdp: pinned certificate"),
        form=Field("new-rdp-fingerprint", "RDP certificate SHA-256",
                   "(RDP only: pin it; empty = not verified)",
                   placeholder="empty: the certificate is NOT verified",
                   hint="Default for a new RDP desktop: certificates are not verified (policy"
                        " ignore). Pin the server's SHA-256 fingerprint to verify it.")),
    RdpOption(
        "cert_ca", "PEM of the CA that must have issued the server's certificate for its host",
        _cert_ca,
        cli=Cli("--cert-ca", metavar="PEM_FILE", file=True,
                help="rdp: verify the server's certificate against this CA (its certificate"
                     " in a PEM file) and the desktop's host name (policy ca)"),
        form=Field("new-rdp-ca", "RDP CA certificate (PEM)",
                   "(RDP only: verify the server against it)", kind="textarea",
                   placeholder="-----BEGIN CERTIFICATE-----",
                   hint="The certificate of the CA that issues your RDP servers' certificates:"
                        " the server's must be issued by it for the host above (policy ca).")),
    RdpOption(
        "keyboard_layout", "the layout the server maps keys with: us, gb, de, fr, ... or a"
        " layout id such as 0x00000407; stored empty for US English, the default",
        _keyboard_layout, editable=True,
        cli=Cli("--keyboard-layout", metavar="LAYOUT",
                help="rdp: the keyboard layout the server maps keys with: a name (us, gb, de,"
                     " fr, ch-de, es, it, ...) or a layout id such as 0x00000407"
                     " (default: us)"),
        form=Field("new-rdp-keyboard", "RDP keyboard layout", kind="select", menu=_layouts,
                   shown_default=klid(DEFAULT_LAYOUT),
                   hint="The layout the server turns keys into characters with: the one"
                        " printed on the users' keyboards (AltGr and dead keys follow it).")),
)
BY_NAME = {o.name: o for o in OPTIONS}
EDITABLE = tuple(o for o in OPTIONS if o.editable)


def rdp_options(options: Mapping[str, str]) -> dict[str, str]:
    """Checked RDP options: every option of ``OPTIONS``, each through its checker in the
    table's order (a checker may read the options checked before it)."""
    unknown = set(options) - set(BY_NAME)
    if unknown:
        raise BadRequest(f"unknown RDP option {sorted(unknown)[0]!r}")
    checked: dict[str, str] = {}
    for option in OPTIONS:
        checked[option.name] = option.check(options.get(option.name, ""), options, checked)
    return checked


def ca_names(pem: str) -> str:
    """The subjects' common names of PEM certificates, for the admin pages ("" when none)."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode()) if pem else []
    except ValueError:
        return ""
    names = [a.value for c in certs for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return ", ".join(str(n) for n in names)


def rdp_account(username: str, domain: str, password: str) -> tuple[str, str, str]:
    """A person's own account on a per-user RDP desktop, checked: (username, domain, password)."""
    username = username.strip()
    if not username or len(username) > 104 or not username.isprintable():
        raise BadRequest("enter the user name of your account on this desktop")
    if not password or len(password) > 256 or any(c in password for c in "\r\n\0"):
        raise BadRequest("enter the password of your account on this desktop"
                         " (at most 256 characters, no line breaks)")
    return username, rdp_domain(domain), password
