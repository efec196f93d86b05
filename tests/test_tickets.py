"""One-time connection tickets: single use, expiry, binding to user and sessions."""

from __future__ import annotations

import pytest

from gateway.errors import TicketError
from gateway.tickets import TicketBook


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _mint(book: TicketBook) -> str:
    return book.mint(user_id=1, web_session_id="ws1", desktop_id=7, session_id="s1")


def test_ticket_is_consumed_once() -> None:
    book = TicketBook(30, clock=Clock())
    token = _mint(book)
    ticket = book.consume(token, user_id=1, web_session_id="ws1", session_id="s1")
    assert ticket.desktop_id == 7
    with pytest.raises(TicketError):
        book.consume(token, user_id=1, web_session_id="ws1", session_id="s1")


def test_expired_ticket_is_refused_and_reported() -> None:
    clock = Clock()
    book = TicketBook(30, clock=clock)
    token = _mint(book)
    clock.now += 30
    with pytest.raises(TicketError, match="expired"):
        book.consume(token, user_id=1, web_session_id="ws1", session_id="s1")
    other = _mint(book)
    clock.now += 31
    assert book.expired_sessions() == ["s1"]
    with pytest.raises(TicketError):
        book.consume(other, user_id=1, web_session_id="ws1", session_id="s1")


@pytest.mark.parametrize("binding", [
    {"user_id": 2, "web_session_id": "ws1", "session_id": "s1"},
    {"user_id": 1, "web_session_id": "ws2", "session_id": "s1"},
    {"user_id": 1, "web_session_id": "ws1", "session_id": "s2"},
])
def test_ticket_bound_to_user_web_session_and_session(binding: dict[str, object]) -> None:
    book = TicketBook(30, clock=Clock())
    token = _mint(book)
    with pytest.raises(TicketError):
        book.consume(token, **binding)  # type: ignore[arg-type]
    # A mismatch burns the ticket: the rightful owner cannot use a ticket someone tried.
    with pytest.raises(TicketError):
        book.consume(token, user_id=1, web_session_id="ws1", session_id="s1")


@pytest.mark.parametrize("token", ["", "x", "A" * 32])
def test_unknown_tickets(token: str) -> None:
    book = TicketBook(30, clock=Clock())
    _mint(book)
    with pytest.raises(TicketError):
        book.consume(token, user_id=1, web_session_id="ws1", session_id="s1")
