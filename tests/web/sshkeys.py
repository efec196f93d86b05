"""Keys for the SSH host pages' and API's tests, made with ssh-keygen (no sshd needed): the
gateway's private key for a host, the host's own key, and the lines of the private key that no
answer may ever hold."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Keys:
    private_key: str  # the gateway's key for the host (OpenSSH, no passphrase)
    host_key: str  # the host's public key: "ssh-ed25519 AAAA... comment"
    other_host_key: str  # another host key (a key that changed)

    @property
    def secret_lines(self) -> list[str]:
        """The private key's base64 lines: none may appear in a page, a JSON answer or a log."""
        return [line for line in self.private_key.splitlines()
                if line and not line.startswith("-----")]

    def leaked(self, text: str) -> list[str]:
        return [line for line in self.secret_lines if line in text]


def keygen(folder: Path, name: str) -> Path:
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                    "-f", str(path)], check=True, timeout=30)
    return path


def make_keys(folder: Path) -> Keys:
    client, host, other = (keygen(folder, n) for n in ("client", "host", "other"))
    return Keys(client.read_text(), Path(f"{host}.pub").read_text().strip(),
                Path(f"{other}.pub").read_text().strip())


def fingerprint(public_key: str) -> str:
    """``ssh-keygen -l``'s SHA256:… for a public key line."""
    out = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=public_key, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return out.split()[1]
