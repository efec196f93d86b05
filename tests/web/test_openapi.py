"""The OpenAPI document is valid 3.1 and describes exactly the routes the app serves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.config import Settings

API = "/api/v1"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


@pytest.fixture
async def spec(client: TestClient) -> dict[str, Any]:  # type: ignore[type-arg]
    resp = await client.get(f"{API}/openapi.json")  # public: no credentials
    assert resp.status == 200 and resp.content_type == "application/json"
    document: dict[str, Any] = await resp.json()
    return document


def router_operations(client: TestClient) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(route.method.lower(), route.resource.canonical)
            for route in client.server.app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith(API)}


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in spec["paths"].items() for method in ops}


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_router_and_document_agree(client: TestClient, spec: dict[str, Any]) -> None:  # type: ignore[type-arg]
    served = router_operations(client)
    assert ("head", f"{API}/desktops") not in served  # no undocumented implicit HEAD routes
    assert served == documented_operations(spec)
    assert len(served) >= 20


def test_every_operation_is_described(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer",
                                 "description": schemes["bearer"]["description"]}
    ids = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ids.add(op["operationId"])
            assert op["summary"] and op["tags"] and op["responses"]
            for name in re.findall(r"\{(\w+)\}", path):
                assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"])
            if path == f"{API}/openapi.json":
                assert op["security"] == []
                continue
            assert {"401", "403"} <= set(op["responses"])
            if method == "get":
                assert {"bearer": []} in op["security"] and {"session": []} in op["security"]
            else:
                assert {"session": [], "csrf": []} in op["security"]
                assert {"session": []} not in op["security"]
    assert len(ids) == sum(len(ops) for ops in spec["paths"].values())


def test_secrets_are_write_only(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "password" not in schemas["Desktop"]["properties"]
    assert schemas["Desktop"]["additionalProperties"] is False
    create = spec["paths"][f"{API}/desktops"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"]["properties"]["password"]["writeOnly"]
    assert not {"secret", "hash", "token_hash"} & set(schemas["ApiToken"]["properties"])
