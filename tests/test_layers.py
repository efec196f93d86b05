"""The layers import only downwards (README.md, "Architecture: where a change goes").

Read from the source with ``ast``: every ``import`` and ``from ... import`` of every module,
relative ones resolved, including those only made for type checking.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports, as dotted names (``from x import y`` counts ``x.y`` too)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(GATEWAY.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offences(layer: tuple[str, ...], forbidden: tuple[str, ...],
              allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{module} imports {imported}"
                  for module, imports in MODULES.items() if _within(module, layer)
                  for imported in imports
                  if _within(imported, forbidden) and not _within(imported, allowed))


EDGES = ("gateway.web", "gateway.cli", "gateway.cli_vms", "gateway.cli_kiosks", "gateway.cli_ssh",
         "gateway.app")


def test_the_modules_are_found() -> None:
    assert {"gateway.proxy.tunnel", "gateway.relay", "gateway.broker", "gateway.web.client",
            "gateway.rdp.bridges", "gateway.xdisplay.xvnc"} <= set(MODULES)


def test_the_byte_path_knows_only_the_domain_types_and_errors() -> None:
    gateway_imports = _offences(("gateway.proxy",), ("gateway",),
                                allowed=("gateway.proxy", "gateway.model", "gateway.errors"))
    assert gateway_imports == []
    assert _offences(("gateway.proxy",), ("aiohttp",)) == []


def test_the_relay_does_not_reach_up() -> None:
    assert _offences(("gateway.relay",),
                     (*EDGES, "gateway.broker", "gateway.cases", "aiohttp.web")) == []


@pytest.mark.parametrize("layer", ["gateway.providers", "gateway.rdp", "gateway.xdisplay"])
def test_desktops_know_nothing_of_the_layers_above(layer: str) -> None:
    assert _offences((layer,), (*EDGES, "gateway.broker", "gateway.relay", "gateway.cases",
                                "gateway.protocols")) == []


def test_x_displays_are_not_desktops() -> None:
    assert _offences(("gateway.xdisplay",), ("gateway.providers", "gateway.rdp")) == []


@pytest.mark.parametrize("layer", ["gateway.broker", "gateway.protocols", "gateway.cases",
                                   "gateway.store", "gateway.auth", "gateway.model",
                                   "gateway.errors", "gateway.audit", "gateway.live"])
def test_nothing_below_the_edges_imports_them(layer: str) -> None:
    assert _offences((layer,), EDGES) == []
