"""RDP desktops: served through a private bridge, FreeRDP's ``xfreerdp`` inside a private Xvnc.

- ``options``: the one table of a desktop's RDP options (checks, CLI flags, API schema, form);
- ``target``: the server and the account a bridge signs in with;
- ``freerdp``: xfreerdp's command line, exit codes and sign-in signals;
- ``errors``: the reasons a person reads and the errors that carry them;
- ``bridges``: the supervisor of this node's bridges (start, reuse, grace, exit);
- ``accounts``: a person's own account on a per-user RDP desktop;
- ``adapter``: the ``rdp`` protocol adapter the broker uses (``gateway.protocols``).
"""
