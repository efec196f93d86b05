"""Whatever an outsider sends, a real gateway answers 4xx with a reason (never 5xx), names no
versions in its Server header, and tells nobody which desktop ids exist.

Every route: the REST API through schemathesis against the served OpenAPI document, and every
route of the application's router (pages, forms, event streams, websockets, static files) with
hand-written malformed paths, queries, bodies and headers, as an admin, a user and a stranger.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from served import Served, serve, sign_in
from websupport import PASSWORD, csrf_of
from yarl import URL

from gateway.app import create_app
from gateway.config import load_settings

BIG = "9" * 25  # above 2**63
NESTED = "[" * 5000 + "]" * 5000
SURROGATE = '{"name": "\\ud800", "text": "\\udfff", "reason": "\\ud800"}'
HUGE_NUMBERS = json.dumps({"width": int(BIG), "height": 1, "days": int(BIG),
                           "user_id": int(BIG), "port": int(BIG)})
# Path parameters no route should choke on.
BAD_IDS = (BIG, "-" + BIG, "0", "abc", "%ff%fe", "%E2%80%AE", "a" * 300)
VERSION = re.compile(r"python|aiohttp|\d+\.\d+", re.I)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("gateway")) as served:
        yield served


Who = tuple[requests.Session, str]


@pytest.fixture(scope="module")
def people(gateway: Served) -> dict[str, Who]:
    """The admin and alice signed in with both factors, and a stranger who only opened /login."""
    stranger = requests.Session()
    page = stranger.get(gateway.base + "/login", timeout=10).text
    return {"admin": sign_in(gateway, gateway.admin_name, gateway.admin_password),
            "alice": sign_in(gateway, "alice", PASSWORD),
            "stranger": (stranger, csrf_of(page))}


def router_routes(gateway: Served) -> list[tuple[str, str]]:
    """(method, path template) of every route the application registers."""
    found = []

    def walk(app: web.Application) -> None:
        for resource in app.router.resources():
            info = resource.get_info()
            if "app" in info:  # a sub-application (/admin/, /api/v1/): its routes too
                walk(info["app"])  # whose routes carry the prefix once mounted
                continue
            template = info.get("formatter") or info.get("path") or (
                info.get("prefix", "") + "/{filename}")
            for route in resource:
                if route.method != "HEAD":
                    found.append((route.method, str(template)))

    walk(create_app(load_settings(gateway.config, env={})))
    assert any(path.startswith("/admin/") for _, path in found)
    assert any(path.startswith("/api/v1/") for _, path in found)
    return sorted(set(found))


def fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


def send(http: requests.Session, method: str, url: str, **kwargs: object) -> requests.Response:
    """One request; an event stream (which never ends) is judged by its head and closed."""
    resp = http.request(method, url, timeout=30, allow_redirects=False, stream=True,
                        **kwargs)  # type: ignore[arg-type]
    if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        resp.close()
        resp._content = b"(event stream)"
    else:
        resp.content  # noqa: B018 (read it all)
        resp.close()
    return resp


def assert_answered(resp: requests.Response, what: str) -> None:
    """A 4xx comes with a reason; nothing is a 5xx; no version in the Server header."""
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    # aiohttp's static files answer a missing file with an empty 404 (a page asked for an asset).
    asset = re.search(r"/(static|novnc|chartjs)/", resp.url) and resp.status_code == 404
    if resp.status_code >= 400 and not asset:
        assert resp.text.strip(), f"{what}: {resp.status_code} without a reason"
    server = resp.headers.get("Server", "")
    assert not VERSION.search(server), f"{what}: Server: {server}"


def bodies(csrf: str) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) pairs: malformed forms and JSON, each carrying a valid CSRF token so
    that the request gets past the CSRF check to the parsing behind it."""
    form = "application/x-www-form-urlencoded"
    token = csrf.encode()
    return [
        ({"Content-Type": form}, b"username=\xff\xfe&password=\xff&_csrf=" + token),
        ({"Content-Type": form + "; charset=nope"}, b"username=a&_csrf=" + token),
        ({"Content-Type": form}, f"port={BIG}&user_id={BIG}&before_id={BIG}&_csrf={csrf}"
                                 .encode()),
        ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nbroken"),
        ({"Content-Type": "application/json", "X-CSRF-Token": csrf}, NESTED.encode()),
        ({"Content-Type": "application/json", "X-CSRF-Token": csrf}, SURROGATE.encode()),
        ({"Content-Type": "application/json", "X-CSRF-Token": csrf}, HUGE_NUMBERS.encode()),
        ({"Content-Type": "application/json", "X-CSRF-Token": csrf}, b"\xff\xfe{}"),
        ({"Content-Type": "application/json; charset=nope", "X-CSRF-Token": csrf}, b"{}"),
        ({"Content-Type": "application/json", "X-CSRF-Token": csrf}, b'{"a": NaN, "b": 1e999}'),
    ]


RAW_HEADERS = {"Cookie": b"deskgate_session=\xff\xfe; deskgate_pre=\xff; deskgate_oidc=\xfe",
               "X-CSRF-Token": b"\xff\xfe", "Authorization": b"Bearer dg_\xff\xfe",
               "User-Agent": b"\xff\xfe", "Origin": b"http://\xff", "Accept": b"\xff",
               "X-Forwarded-For": b"\xff"}
# A query string as sent on the wire: numbers beyond 64 bits, a lone surrogate and bytes that
# are not UTF-8, escapes, overlong values.
QUERY = (f"limit={BIG}&before_id={BIG}&user_id={BIG}&since=1e999&until={'x' * 300}&from={BIG}"
         f"&to=%ED%A0%80&group=%ff&ticket={'t' * 300}&info=%1b%5b31m&q={'%E2%80%AE' * 50}")


def test_every_page_route_answers_malformed_input_with_4xx(gateway: Served,
                                                            people: dict[str, Who]) -> None:
    routes = router_routes(gateway)
    assert len(routes) > 30, routes
    sent = 0
    for who, (http, csrf) in people.items():
        for method, template in routes:
            if template in ("/logout", "/kiosk/signout"):
                csrf_for_route = "wrong"  # a valid one would end the session under test
            else:
                csrf_for_route = csrf
            for bad in BAD_IDS:
                url = gateway.base + fill(template, bad)
                resp = send(http, method, url, params=QUERY)
                assert_answered(resp, f"{who} {method} {url[:120]}")
                sent += 1
            # Headers whose bytes are not UTF-8 (aiohttp keeps them as lone surrogates).
            # (Without the session: these headers replace its cookies, and what the answer sets
            # would land in its cookie jar.)
            resp = send(requests.Session(), method, gateway.base + fill(template, "1"),
                        headers=RAW_HEADERS)
            assert_answered(resp, f"{who} {method} {template} with raw header bytes")
            if method in ("POST", "PATCH", "DELETE", "PUT"):
                # Id 0 names nothing: the body is read and refused, and nothing real changes.
                url = gateway.base + fill(template, "0")
                for headers, body in bodies(csrf_for_route):
                    resp = send(http, method, url, data=body, headers=headers)
                    assert_answered(resp, f"{who} {method} {url} {headers} {body[:60]!r}")
                    sent += 1
    print(f"{sent} malformed requests over {len(routes)} routes")
    assert sent > 1000
    log = gateway.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_the_sign_in_form_refuses_undecodable_bytes_unauthenticated(gateway: Served) -> None:
    http = requests.Session()
    csrf = csrf_of(http.get(gateway.base + "/login", timeout=10).text)
    resp = http.post(gateway.base + "/login", data=b"username=\xff&password=x&_csrf=" +
                     csrf.encode(), timeout=10,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400 and "not valid UTF-8" in resp.text
    resp = http.get(gateway.base + "/static/" + "a" * 300, timeout=10)
    assert resp.status_code == 404 and "nothing at this address" in resp.text
    assert "Traceback" not in gateway.log()


def test_api_answers_malformed_json_with_a_reason(gateway: Served) -> None:
    auth = {"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/json"}
    cases = [
        (f"/api/v1/desktops/{BIG}", "GET", None, "whole number"),
        (f"/api/v1/audit?before_id={BIG}", "GET", None, "whole number"),
        (f"/api/v1/sessions?limit={BIG}", "GET", None, "limit"),
        ("/api/v1/desktops", "POST", '{"name": "x", "provider": "static", "port": ' + BIG + "}",
         "64 bits"),
        ("/api/v1/desktops", "POST", NESTED, "nested"),
        ("/api/v1/desktops", "POST", SURROGATE, "surrogate"),
        ("/api/v1/desktops", "POST", '{"name": "x", "port": Infinity}', "JSON"),
    ]
    for path, method, body, reason in cases:
        resp = requests.request(method, gateway.base + path, data=body, headers=auth, timeout=10)
        assert resp.status_code == 400, (path, resp.status_code, resp.text)
        assert reason in resp.json()["error"], (path, resp.text)
    resp = requests.post(gateway.base + "/api/v1/desktops", data=b"{}", timeout=10,
                         headers={**auth, "Content-Type": "application/json; charset=nope"})
    assert resp.status_code == 400 and "charset" in resp.json()["error"]


def test_a_client_that_leaves_mid_body_logs_no_error(gateway: Served) -> None:
    before = gateway.log()
    for path, content_type in (("/login", "application/x-www-form-urlencoded"),
                               ("/api/v1/desktops", "application/json")):
        with socket.create_connection(("127.0.0.1", int(gateway.base.rsplit(":", 1)[1]))) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                      f"Authorization: Bearer {gateway.token}\r\n"
                      "Content-Length: 100000\r\n\r\nusername=".encode())
            time.sleep(0.3)
    time.sleep(1.0)
    assert requests.get(gateway.base + "/healthz", timeout=5).status_code == 200
    added = gateway.log()[len(before):]
    assert "Traceback" not in added and " ERROR " not in added, added


# Server header ------------------------------------------------------------------------------------
def test_no_response_names_a_version(gateway: Served, people: dict[str, Who]) -> None:
    http, _ = people["alice"]
    responses = [http.get(gateway.base + path, timeout=10) for path in
                 ("/", "/login", "/nowhere", "/static/deskgate.css", "/static/missing.css",
                  "/novnc/core/rfb.js", "/api/v1/openapi.json", "/healthz",
                  f"/desktops/{gateway.desktops['Theirs']}")]
    responses.append(requests.get(gateway.metrics_base + "/metrics", timeout=10))
    responses.append(requests.get(gateway.base + "/metrics", timeout=10))
    for resp in responses:
        assert resp.headers.get("Server") == "Deskgate", (resp.url, resp.headers)
    # A websocket upgrade (refused after the upgrade: no ticket) and requests aiohttp refuses
    # before any application sees them.
    port = int(gateway.base.rsplit(":", 1)[1])
    raw = [b"GET /ws/sessions/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
           b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
           b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"]
    for request in raw:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            head = s.recv(4096).split(b"\r\n\r\n")[0].decode("latin-1")
        servers = [line for line in head.splitlines() if line.lower().startswith("server:")]
        assert servers == ["Server: Deskgate"], head
    # Those malformed requests are the client's mistake: one line each in the log.
    time.sleep(0.5)
    log = gateway.log()
    assert "malformed request (LineTooLong), answered 400" in log, log[-2000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# desktop ids --------------------------------------------------------------------------------------
def test_unassigned_and_missing_desktops_answer_alike(gateway: Served,
                                                      people: dict[str, Who]) -> None:
    http, csrf = people["alice"]
    routes = [(m, t) for m, t in router_routes(gateway) if "{desktop_id}" in t]
    assert {("GET", "/desktops/{desktop_id}"), ("POST", "/desktops/{desktop_id}/connect"),
            ("POST", "/desktops/{desktop_id}/credentials"),
            ("DELETE", "/desktops/{desktop_id}/credentials")} <= set(routes), routes
    theirs, missing = gateway.desktops["Theirs"], 987654
    for method, template in routes:
        for accept in ("text/html", "application/json"):
            answers = []
            for desktop_id in (theirs, missing):
                resp = http.request(method, gateway.base + fill(template, str(desktop_id)),
                                    json={"username": "me", "password": "x" * 8},
                                    headers={"X-CSRF-Token": csrf, "Accept": accept},
                                    timeout=10, allow_redirects=False)
                answers.append((resp.status_code, resp.headers.get("Content-Type"), resp.text))
            assert answers[0] == answers[1], (method, template, accept, answers)
            assert answers[0][0] == 404, (method, template, answers[0])
    # Her own desktop is still hers.
    assert http.get(f"{gateway.base}/desktops/{gateway.desktops['Mine']}",
                    timeout=10).status_code == 200


# the REST API, generated ----------------------------------------------------------------------------
def test_every_api_operation_survives_schemathesis(tmp_path: Path) -> None:
    """Generated valid and invalid requests for every operation of the served OpenAPI document,
    with a bearer token, with an admin's web session and with neither; a gateway of its own, as they change
    and delete things. Bounded: a few examples per operation and mode, derandomized."""
    with serve(tmp_path / "api") as gateway:
        admin, csrf = sign_in(gateway, gateway.admin_name, gateway.admin_password)
        schema = schemathesis.openapi.from_url(gateway.base + "/api/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        calls = 0
        as_token = {"Authorization": f"Bearer {gateway.token}"}
        as_session = {"X-CSRF-Token": csrf}
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                @settings(max_examples=4, deadline=None, database=None, derandomize=True,
                          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    nonlocal calls
                    for session, headers in ((None, as_token), (admin, as_session),
                                             (None, {})):  # the last: a stranger
                        try:
                            resp = case.call(base_url=gateway.base, session=session,
                                             headers=headers, timeout=30)
                        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                                UnicodeError) as exc:  # the client could not even send it
                            print(f"not sent: {exc}")
                            continue
                        calls += 1
                        assert resp.status_code < 500, (
                            f"{case.method} {case.formatted_path}: {resp.status_code}"
                            f" {resp.text[:300]}\n{case.as_curl_command()}")
                        if resp.status_code >= 400:
                            assert resp.text.strip(), f"{resp.status_code} without a reason"

                check()
        print(f"{calls} generated requests over {len(operations)} operations")
        assert calls >= 200, calls
        log = gateway.log()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_header_bytes_that_are_not_utf8(gateway: Served) -> None:
    """A user agent or forwarded address with bytes that are not UTF-8 signs in and connects
    like any other (the stored text shows the bytes replaced), and never makes a 5xx."""
    http = requests.Session()
    http.headers["User-Agent"] = b"Mozilla/5.0 \xff\xfe\xed\xa0\x80"  # type: ignore[assignment]
    http.headers["X-Forwarded-For"] = b"\xff\xfe, 10.0.0.1"  # type: ignore[assignment]
    page = http.get(gateway.base + "/login", timeout=10).text
    resp = http.post(gateway.base + "/login", data={"username": "alice", "password": PASSWORD,
                                                   "_csrf": csrf_of(page)},
                     allow_redirects=False, timeout=30)
    assert resp.status_code == 303, resp.text
    assert "Traceback" not in gateway.log()


async def test_many_probes_at_once_answer_alike_and_are_all_audited(gateway: Served,
                                                                    people: dict[str, Who]) -> None:
    """200 connects in flight for desktop ids that are not alice's (one unassigned, the rest
    missing): the same 404 each, one audit row each, and the audit chain still verifies."""
    http, csrf = people["alice"]
    before = int(re.search(r"(\d+) rows", gateway.cli("audit", "verify")).group(1))  # type: ignore[union-attr]
    ids = [gateway.desktops["Theirs"], *range(10_000, 10_199)]
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies(http.cookies.get_dict(), URL(gateway.base))
    async with aiohttp.ClientSession(cookie_jar=jar) as alice:
        async def probe(desktop_id: int) -> tuple[int, str]:
            async with alice.post(f"{gateway.base}/desktops/{desktop_id}/connect",
                                  headers={"X-CSRF-Token": csrf,
                                           "Accept": "application/json"}) as resp:
                return resp.status, await resp.text()

        answers = await asyncio.gather(*(probe(i) for i in ids))
    assert set(answers) == {(404, '{"error": "no such desktop"}')}, set(answers)
    verify = gateway.cli("audit", "verify")
    assert "intact" in verify, verify
    after = int(re.search(r"(\d+) rows", verify).group(1))  # type: ignore[union-attr]
    assert after - before == len(ids)
    listing = gateway.cli("audit", "--limit", str(len(ids)))
    assert listing.count("session.denied") == len(ids)
    assert listing.count("not assigned") == 1 and listing.count("no such desktop") == len(ids) - 1
