"""A gateway's libvirt provider that can only reach its hypervisor through an SSH host: run by
``test_remote_hypervisor`` in a mount namespace of its own where libvirt's socket folder and the
VM folders are hidden under empty tmpfs mounts, so the files, libvirtd and the VM's screen are
reachable only through the SSH connection.

Reads one JSON object (the hypervisor, the SSH host, the bundle, the desktop id) on its first
stdin line, then does what each further line says and answers with one JSON line:
``start`` (made, started, screen and ready text awaited; the RFB banner read through the
forwarded screen; what this process sees of the hidden paths), ``observe``, ``stop``, ``delete``,
``quit``. A failure answers ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from gateway.config import HypervisorConfig
from gateway.model import Bundle, DesktopVm, Secret
from gateway.providers.base import DesktopSpec, ProviderContext
from gateway.providers.libvirt.hypervisor import HypervisorError
from gateway.providers.libvirt.provider import LibvirtProvider
from gateway.ssh.connections import SshConnections, SshHost


async def banner(path: str) -> str:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        return (await asyncio.wait_for(reader.readexactly(12), 10)).decode()
    finally:
        writer.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    given = json.loads(await reader.readline())
    config = HypervisorConfig(**given["hypervisor"])
    host = SshHost(**{**given["host"], "private_key": Secret(given["host"]["private_key"])})
    ssh = SshConnections(Path(given["runtime"]))
    made: list[str] = []

    async def reach(name: str) -> tuple[SshConnections, SshHost]:
        made.append(name)
        return ssh, host

    ctx = ProviderContext(data_dir=Path(given["runtime"]), hypervisors={config.name: config},
                          vm_stop_timeout=2.0, vm_start_timeout=60.0, ssh=reach)
    provider = LibvirtProvider(ctx)
    spec = DesktopSpec(id=given["desktop_id"], name="far-vm", provider="libvirt",
                       vm=DesktopVm(given["desktop_id"], Bundle(**given["bundle"]), config.name,
                                    "creating"))

    def out(answer: dict[str, object]) -> None:
        print(json.dumps(answer), flush=True)

    try:
        while line := (await reader.readline()).decode().strip():
            logging.info("asked: %s", line)
            try:
                if line == "start":
                    await provider.create(spec)
                    await provider.ensure_running(spec)
                    endpoint = await provider.endpoint(spec)
                    assert endpoint.unix_path is not None
                    out({"banner": await banner(endpoint.unix_path),
                         "screen": endpoint.unix_path,
                         "sees_libvirt_socket": os.path.exists("/run/libvirt/libvirt-sock"),
                         "sees_storage": os.listdir(Path(config.storage_dir).parent),
                         "ssh_connects": ssh.health[host.name].connects,
                         "reached": sorted(set(made))})
                elif line == "observe":
                    seen = await provider.observe(config.name)
                    out({"seen": {str(k): v.detail for k, v in seen.items()},
                         "state": await provider.state(spec)})
                elif line == "stop":
                    await provider.stop(spec)
                    out({"state": await provider.state(spec)})
                elif line == "delete":
                    await provider.delete(spec)
                    out({"deleted": True})
                elif line == "drop":  # the SSH connection ends (as when the network blinks)
                    await ssh.drop(host.name)
                    out({"dropped": True})
                elif line == "quit":
                    break
            except (HypervisorError, Exception) as exc:  # noqa: BLE001 - told to the test
                out({"error": f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"})
    finally:
        await provider.close()
        await ssh.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="remote gateway: %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
