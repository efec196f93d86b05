"""Use cases by area, shared by the web pages, the REST API and the command line.

One class per area: ``SignIn`` (signin.py), ``SingleSignOn`` (sso.py), ``Accounts``
(accounts.py), ``Catalog`` (catalog.py), ``Access`` (access.py), ``Sessions`` (sessions.py) and
``AuditTrail`` (audit_trail.py); gateway/app.py builds one of each. Every method that changes
something takes the ``Actor`` (actor.py) first and writes exactly one audit event naming it.
The edges (gateway/web/, gateway/cli.py) never read the store: what they show comes from here.
"""
