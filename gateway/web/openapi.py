"""One declaration of the REST API's operations: it registers the routes and writes the OpenAPI 3.1
document, so that the two cannot drift apart.

``ApiTable.operation`` is a decorator that records a handler with its method, path, summary and
JSON schemas. ``ApiTable.routes`` hands aiohttp every operation (the sub-application that serves them checks
who calls, see ``gateway/web/api.py``); ``ApiTable.document`` describes the very same operations.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Schema = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSRF_HEADER = "X-CSRF-Token"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# schema helpers ---------------------------------------------------------------------------------
def obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """A closed JSON object: unknown fields are refused (the handlers refuse them too)."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


STRING: Schema = {"type": "string"}
# Whole numbers are 64-bit (SQLite INTEGER): larger ones are refused with a 400.
INTEGER: Schema = {"type": "integer", "format": "int64"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "number", "description": "seconds since the epoch (UTC)"}
ERROR: Schema = obj(("error",), error={"type": "string", "description": "why, safe to show"})


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    schema: Schema
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    handler: Handler
    tag: str
    request: Schema | None = None
    response: Schema | None = None  # None: an empty response (204)
    status: int = 200
    query: tuple[Param, ...] = ()
    path_types: tuple[tuple[str, Schema], ...] = ()  # path parameters are integers unless named
    public: bool = False  # no authentication at all; everything else is guarded
    tokens: bool = True  # False: a signed-in admin's web session only, never an API token

    @property
    def writes(self) -> bool:
        return self.method in _WRITE_METHODS

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class ApiTable:
    """The API's operations, in declaration order."""

    def __init__(self, title: str, version: str, schemas: dict[str, Schema]) -> None:
        self.title = title
        self.version = version
        self.schemas = schemas
        self.operations: list[Operation] = []

    def operation(self, method: str, path: str, summary: str, *, tag: str,
                  request: Schema | None = None, response: Schema | None = None,
                  status: int | None = None, query: tuple[Param, ...] = (),
                  path_types: dict[str, Schema] | None = None, public: bool = False,
                  tokens: bool = True) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            op = Operation(method.upper(), path, summary, handler, tag, request, response,
                           status if status is not None else (200 if response is not None else 204),
                           query, tuple((path_types or {}).items()), public, tokens)
            if any((o.method, o.path) == (op.method, op.path) for o in self.operations):
                raise ValueError(f"{op.method} {op.path} declared twice")
            self.operations.append(op)
            return handler
        return register

    def routes(self, prefix: str) -> list[web.RouteDef]:
        """Every operation as an aiohttp route of a sub-application mounted at ``prefix``
        (no implicit HEAD)."""
        def relative(path: str) -> str:
            if not path.startswith(prefix + "/"):
                raise ValueError(f"{path} is not under {prefix}")
            return path[len(prefix):]
        return [web.RouteDef(op.method, relative(op.path), op.handler,
                             {"allow_head": False} if op.method == "GET" else {})
                for op in self.operations]

    def operation_of(self, handler: object) -> Operation | None:
        """The operation whose handler this is (None for any other)."""
        return next((op for op in self.operations if op.handler is handler), None)

    # the document ------------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = self._describe(op)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version,
                     "description": "Administration of Deskgate. Authenticate with an API token"
                                    " (`Authorization: Bearer dg_…`, see `deskgate token create`)"
                                    " or, from a browser, with a signed-in admin's session cookie"
                                    f" plus the `{CSRF_HEADER}` header on every write."},
            "paths": paths,
            "components": {
                "schemas": {"Error": ERROR, **self.schemas},
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer",
                               "description": "an API token; read-only tokens may only GET"},
                    "session": {"type": "apiKey", "in": "cookie", "name": "deskgate_session",
                                "description": "a fully signed-in admin's web session"},
                    "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER,
                             "description": "the web session's CSRF token, on writes"},
                },
            },
        }

    def _describe(self, op: Operation) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                               "tags": [op.tag]}
        types = dict(op.path_types)
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": types.get(name, INTEGER)}
            for name in _PATH_PARAM.findall(op.path)]
        params += [{"name": p.name, "in": "query", "required": False, "schema": p.schema,
                    **({"description": p.description} if p.description else {})}
                   for p in op.query]
        if params:
            out["parameters"] = params
        if op.request is not None:
            out["requestBody"] = {"required": True,
                                  "content": {"application/json": {"schema": op.request}}}
        responses: dict[str, Any] = {}
        if op.response is None:
            responses[str(op.status)] = {"description": "done"}
        else:
            responses[str(op.status)] = {"description": "success", "content": {
                "application/json": {"schema": op.response}}}
        errors = []
        if op.request is not None or op.query or op.writes:
            errors.append(("400", "invalid input"))
        if not op.public:
            errors += [("401", "no valid API token or admin session"),
                       ("403", "not an admin, a read-only token on a write, or no CSRF token")]
        if params and any(p["in"] == "path" for p in params):
            errors.append(("404", "no such object"))
        for code, text in errors:
            responses[code] = {"description": text,
                               "content": {"application/json": {"schema": ref("Error")}}}
        out["responses"] = responses
        if op.public:
            out["security"] = []
        else:
            session: dict[str, list[str]] = {"session": [], "csrf": []} if op.writes else {"session": []}
            out["security"] = [{"bearer": []}, session] if op.tokens else [session]
        return out
