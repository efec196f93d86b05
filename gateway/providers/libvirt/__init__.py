"""Desktop VMs on libvirt (work in progress: the domain description so far)."""
