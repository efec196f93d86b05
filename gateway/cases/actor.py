"""Who acts: a signed-in person, an API token's owner, or the command line."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Forbidden
from ..model import User

# The command line's name in the audit trail: "desktop deleted (by the command line)".
CLI_NAME = "the command line"


@dataclass(frozen=True)
class Actor:
    """The one who asks for a change; every audit row of a change names it."""

    name: str
    user_id: int | None  # None: not an account (the command line)
    is_admin: bool
    client_ip: str | None = None

    @classmethod
    def of(cls, user: User, client_ip: str | None = None) -> Actor:
        return cls(user.name, user.id, user.is_admin, client_ip)

    @classmethod
    def cli(cls) -> Actor:
        """Whoever runs ``deskgate`` on the gateway's host: an admin (they hold its files)."""
        return cls(CLI_NAME, None, True)

    def is_user(self, user: User) -> bool:
        return self.user_id is not None and self.user_id == user.id

    def require_admin(self) -> None:
        """Administration is for admins only, whichever edge asked (deny by default)."""
        if not self.is_admin:
            raise Forbidden("this is for administrators")

    def by(self, detail: str) -> str:
        """An audit detail that names the actor: ``desktop deleted (by alice)``."""
        return f"{detail} (by {self.name})"
