"""A desktop VM as libvirt sees it: the domain XML Deskgate defines, and reading back which
domains are Deskgate's.

Deskgate owns the domains it creates and only those: each is named ``PREFIX`` + the desktop's
id and carries a metadata element (``NAMESPACE``) naming the desktop id, and a domain is taken
as Deskgate's only when both agree. Its screen is a VNC server on a unix socket in a folder
only the hypervisor's qemu user may write (and the gateway, as root, read): never a TCP port.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PREFIX = "deskgate-"
NAMESPACE = "https://deskgate.dev/libvirt/desktop/1"
_NS = {"dg": NAMESPACE}


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML says, checked when made."""

    desktop_id: int
    vcpus: int
    memory_mib: int
    root_disk: Path  # the qcow2 overlay on the bundle's base image
    user_volume: Path  # the qcow2 volume that outlives a rebuild
    screen_socket: Path  # the VNC console's unix socket
    kernel: Path | None = None  # direct kernel boot (test guests); else the disk's boot loader
    initrd: Path | None = None
    cmdline: str = ""
    virt_type: str = "qemu"  # "kvm" where it works; "qemu" is TCG, slower but everywhere
    serial_log: Path | None = None  # the guest's serial console, to a file
    # A network card on this libvirt network (guests whose screen is a server inside them);
    # None: no network at all (the console is reached through its socket).
    network: str | None = None

    def __post_init__(self) -> None:
        if self.desktop_id <= 0:
            raise ValueError("a desktop id is a positive number")
        if not 1 <= self.vcpus <= 64 or not 64 <= self.memory_mib <= 1 << 20:
            raise ValueError("1-64 vCPUs and 64 MiB to 1 TiB of memory")
        if self.virt_type not in ("qemu", "kvm"):
            raise ValueError("the domain type is qemu or kvm")
        if (self.kernel is None) != (self.initrd is None):
            raise ValueError("a direct kernel boot needs the kernel and the initrd")
        for path in (self.root_disk, self.user_volume, self.screen_socket, self.kernel,
                     self.initrd, self.serial_log):
            if path is not None and not path.is_absolute():
                raise ValueError(f"{path} is not an absolute path")

    @property
    def name(self) -> str:
        return domain_name(self.desktop_id)


def domain_name(desktop_id: int) -> str:
    return f"{PREFIX}{desktop_id}"


def domain_xml(spec: DomainSpec) -> str:
    """The domain's XML (built as a tree: no value can break out of its attribute)."""
    dom = ET.Element("domain", type=spec.virt_type)
    ET.SubElement(dom, "name").text = spec.name
    meta = ET.SubElement(dom, "metadata")
    ET.SubElement(meta, "{%s}desktop" % NAMESPACE).text = str(spec.desktop_id)  # noqa: UP031
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    if spec.kernel is not None and spec.initrd is not None:
        ET.SubElement(os_, "kernel").text = str(spec.kernel)
        ET.SubElement(os_, "initrd").text = str(spec.initrd)
        ET.SubElement(os_, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")  # an ACPI shutdown can be asked for
    devices = ET.SubElement(dom, "devices")
    for path, target in ((spec.root_disk, "vda"), (spec.user_volume, "vdb")):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=str(path))
        ET.SubElement(disk, "target", dev=target, bus="virtio")
    if spec.network is not None:
        interface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(interface, "source", network=spec.network)
        ET.SubElement(interface, "model", type="virtio")
    ET.SubElement(devices, "graphics", type="vnc", socket=str(spec.screen_socket))
    if spec.serial_log is not None:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(spec.serial_log))
        ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(devices, "video"), "model", type="vga")
    ET.register_namespace("dg", NAMESPACE)
    return ET.tostring(dom, encoding="unicode")


def owned_desktop_id(name: str, xml: str) -> int | None:
    """The desktop id of a domain that is Deskgate's (its name and its metadata agree), else
    None: a domain someone else defined is never touched."""
    if not name.startswith(PREFIX):
        return None
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt's own answer about a domain)
    except ET.ParseError:
        return None
    found = root.find("metadata/dg:desktop", _NS)
    if found is None or found.text is None or not found.text.strip().isdigit():
        return None
    desktop_id = int(found.text.strip())
    return desktop_id if domain_name(desktop_id) == name else None


def screen_socket(xml: str) -> Path | None:
    """Where a domain's VNC console listens (its unix socket), as libvirt reports it."""
    try:
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError:
        return None
    graphics = root.find("devices/graphics[@type='vnc']")
    socket = graphics.get("socket") if graphics is not None else None
    return Path(socket) if socket else None
