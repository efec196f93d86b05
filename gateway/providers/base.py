"""The DesktopProvider seam: what the broker asks of every desktop driver.

A provider makes a desktop reachable (starting it when it is stopped), says where the gateway
connects to it and with which credentials, and stops what it started. Drivers are chosen by name
(see ``gateway.providers.PROVIDERS``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from gateway.config import HypervisorConfig
from gateway.logs import TaggedLog
from gateway.model import DesktopVm, Endpoint, Secret
from gateway.ssh.connections import SshConnections, SshHost


@dataclass(frozen=True)
class DesktopSpec:
    """One desktop as a provider needs to see it."""

    id: int
    name: str
    provider: str  # "static" | "local" | "libvirt" | "ssh"
    host: str = ""  # static: VNC host
    port: int = 0  # static: VNC port
    password: Secret | None = None  # static: the desktop's VNC password, already decrypted
    geometry: str = "1280x800"
    protocol: str = "vnc"  # static: "vnc" (banner checked) or another TCP protocol (connect only)
    vm: DesktopVm | None = None  # libvirt: the VM (bundle, hypervisor, state)
    via: str = ""  # ssh: the SSH host the desktop is started on (the desktop option ``via``)


@dataclass(frozen=True)
class ProviderContext:
    """What every provider may use from the application."""

    data_dir: Path  # the local provider keeps state under data_dir/"desktops"/str(id)
    run_as_user: str = "deskgate-desktop"  # used only when the gateway runs as root
    display_base: int = 20  # first X display number the local provider may use
    stop_on_exit: bool = False  # stop local desktops at shutdown (else the next run takes over)
    # A desktop's stored password by desktop id, for probes that must log in (static VNC);
    # None: such desktops are not probed.
    credentials: Callable[[int], Awaitable[Secret | None]] | None = None
    # libvirt: the hypervisors by name (folders filled in), and how long power actions may take
    hypervisors: Mapping[str, HypervisorConfig] = field(default_factory=dict)
    vm_stop_timeout: float = 60.0
    vm_start_timeout: float = 180.0
    # ssh: an SSH host's connections and spec by the host's name (SshHosts.spec);
    # None: this process starts no desktops over SSH.
    ssh: Callable[[str], Awaitable[tuple[SshConnections, SshHost]]] | None = None


class DesktopProvider(Protocol):
    async def ensure_running(self, spec: DesktopSpec) -> None:
        """Make the desktop reachable, starting it if needed.

        Raises ``DesktopUnavailable`` with a reason that is safe to show to the user.
        """
        ...

    async def endpoint(self, spec: DesktopSpec) -> Endpoint:
        """Where the gateway connects, with the credentials it uses."""
        ...

    async def state(self, spec: DesktopSpec) -> str:
        """``"running"``, ``"stopped"`` or ``"unknown"``."""
        ...

    async def stop(self, spec: DesktopSpec) -> None: ...

    async def close(self) -> None:
        """Application shutdown. Processes that must outlive the gateway (local desktops) keep
        running unless ``ProviderContext.stop_on_exit``; nothing else is left behind."""
        ...


@runtime_checkable
class CachingState(Protocol):
    """A provider that caches desktops' states and can be told that one is stale."""

    def forget(self, desktop_id: int) -> None: ...


@runtime_checkable
class Recovering(Protocol):
    """A provider that takes over, at start-up, what an earlier gateway run left running."""

    async def recover(self) -> None: ...


def desktop_log(logger: logging.Logger, name: str) -> TaggedLog:
    """``logger`` with every line prefixed ``[desktop=<name>]``."""
    return TaggedLog(logger, {"desktop": name})
