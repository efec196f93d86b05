"""Versioned schema migrations. Portable SQL: it runs on SQLite and on PostgreSQL.

Append new steps; never edit a released one. Step N brings the schema to version N.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT,
            is_admin BOOLEAN NOT NULL DEFAULT FALSE,
            disabled BOOLEAN NOT NULL DEFAULT FALSE,
            failed_attempts INTEGER NOT NULL DEFAULT 0,
            locked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            totp_secret_enc TEXT,
            totp_enrolled BOOLEAN NOT NULL DEFAULT FALSE,
            totp_last_step BIGINT NOT NULL DEFAULT -1,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE recovery_codes (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            code_hash TEXT NOT NULL,
            PRIMARY KEY (user_id, code_hash)
        )""",
        """CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            state TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            client_ip TEXT NOT NULL,
            user_agent TEXT NOT NULL
        )""",
        """CREATE TABLE desktops (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            provider TEXT NOT NULL,
            protocol TEXT NOT NULL DEFAULT 'vnc',
            host TEXT NOT NULL DEFAULT '',
            port INTEGER NOT NULL DEFAULT 0,
            password_enc TEXT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE assignments (
            desktop_id INTEGER NOT NULL REFERENCES desktops(id) ON DELETE CASCADE,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            PRIMARY KEY (desktop_id, user_id)
        )""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            desktop_id INTEGER NOT NULL,  -- no reference: history outlives a deleted desktop
            web_session_id TEXT NOT NULL,
            state TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            close_reason TEXT,
            close_final BOOLEAN NOT NULL DEFAULT FALSE,
            bytes_up BIGINT NOT NULL DEFAULT 0,
            bytes_down BIGINT NOT NULL DEFAULT 0,
            client_ip TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX sessions_by_state ON sessions(state)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            user_name TEXT,
            desktop_name TEXT,
            client_ip TEXT,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_by_time ON audit(at)",
    ],
    [
        # Single sign-on: identities by (provider, subject), never by e-mail; IdP groups.
        """CREATE TABLE identities (
            provider TEXT NOT NULL,
            subject TEXT NOT NULL,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            PRIMARY KEY (provider, subject)
        )""",
        """CREATE TABLE user_groups (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            group_name TEXT NOT NULL,
            PRIMARY KEY (user_id, group_name)
        )""",
        """CREATE TABLE group_assignments (
            desktop_id INTEGER NOT NULL REFERENCES desktops(id) ON DELETE CASCADE,
            group_name TEXT NOT NULL,
            PRIMARY KEY (desktop_id, group_name)
        )""",
        """CREATE TABLE oidc_logins (
            state_hash TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            browser_hash TEXT NOT NULL,
            nonce_enc TEXT NOT NULL,
            verifier_enc TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "ALTER TABLE web_sessions ADD COLUMN idp TEXT",
        "ALTER TABLE web_sessions ADD COLUMN id_token_enc TEXT",
        "ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'local'",
    ],
    [
        # A tamper-evident audit trail: each row stores the hash of the previous row and its own.
        "ALTER TABLE audit ADD COLUMN prev_hash TEXT",
        "ALTER TABLE audit ADD COLUMN row_hash TEXT",
    ],
    [
        # Administration: API tokens (hashed), desktops in maintenance, who connected from where.
        """CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            read_only BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            last_used DOUBLE PRECISION
        )""",
        "ALTER TABLE desktops ADD COLUMN maintenance BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX audit_by_kind ON audit(kind)",
    ],
    [
        # Protocol options of a desktop (RDP: user name, domain, security mode, certificate
        # policy), as a JSON object; its password stays in password_enc.
        "ALTER TABLE desktops ADD COLUMN options TEXT NOT NULL DEFAULT '{}'",
    ],
    [
        # Per-user RDP desktops: each person's own account on the desktop (password encrypted).
        """CREATE TABLE user_credentials (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            desktop_id INTEGER NOT NULL REFERENCES desktops(id) ON DELETE CASCADE,
            username TEXT NOT NULL,
            domain TEXT NOT NULL DEFAULT '',
            password_enc TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, desktop_id)
        )""",
    ],
    [
        # Brute-force brakes shared by every gateway process: one row per counted event (a
        # sign-in attempt, by client address) in a sliding window, taken before the work it
        # pays for; and where each waiting pre-login came from, to throttle and cap per address.
        """CREATE TABLE rate_slots (
            id INTEGER PRIMARY KEY,
            bucket TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX rate_slots_by_bucket ON rate_slots(bucket, at)",
        "CREATE INDEX rate_slots_by_time ON rate_slots(at)",
        "ALTER TABLE oidc_logins ADD COLUMN client_ip TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX oidc_logins_by_address ON oidc_logins(client_ip, created_at)",
    ],
    [
        # User names are unique by their look-alike key too (gateway.names.name_key: NFKC, case
        # fold, UTS #39 skeleton). SQL cannot compute it: the store fills it in when it opens,
        # and leaves it empty on a row whose key an older row already has (both are kept and
        # reported; neither is merged or renamed).
        "ALTER TABLE users ADD COLUMN name_key TEXT",
        "CREATE UNIQUE INDEX users_by_name_key ON users(name_key)",
    ],
    [
        # Connection attempts that never reached the desktop are "failed" (not "closed"); a
        # retry of such an attempt starts the same row again and counts its tries.
        "ALTER TABLE sessions ADD COLUMN tries INTEGER NOT NULL DEFAULT 1",
    ],
    [
        # New recovery codes, encrypted, kept with the web session that enrolled until the person
        # says they saved them (the page can be reloaded); gone with the session in any case.
        "ALTER TABLE web_sessions ADD COLUMN recovery_codes_enc TEXT",
    ],
    [
        # Desktop VMs. A bundle is a named size of VM and what it costs; self_service lists what
        # a person may do to their own VM (comma-separated, sorted; '' nothing).
        """CREATE TABLE bundles (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            vcpus INTEGER NOT NULL,
            memory_mib INTEGER NOT NULL,
            root_mib INTEGER NOT NULL,
            user_mib INTEGER NOT NULL,
            base_image TEXT NOT NULL,
            protocol TEXT NOT NULL DEFAULT 'console',
            hourly_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
            monthly_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
            self_service TEXT NOT NULL DEFAULT '',
            kernel TEXT NOT NULL DEFAULT '',
            initrd TEXT NOT NULL DEFAULT '',
            cmdline TEXT NOT NULL DEFAULT '',
            ready_text TEXT NOT NULL DEFAULT '',
            created_at DOUBLE PRECISION NOT NULL
        )""",
        # A desktop that is a VM: goes with its desktop; a bundle in use cannot be deleted.
        # self_service NULL: the bundle's policy.
        """CREATE TABLE desktop_vms (
            desktop_id INTEGER PRIMARY KEY REFERENCES desktops(id) ON DELETE CASCADE,
            bundle_id INTEGER NOT NULL REFERENCES bundles(id),
            hypervisor TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            since DOUBLE PRECISION NOT NULL DEFAULT 0,
            mode TEXT NOT NULL DEFAULT 'auto_stop',
            auto_stop_seconds INTEGER NOT NULL DEFAULT 3600,
            self_service TEXT
        )""",
        "CREATE INDEX desktop_vms_by_bundle ON desktop_vms(bundle_id)",
        # Each interval a VM ran, with its mode and rates at the time (usage and cost).
        """CREATE TABLE vm_runs (
            id INTEGER PRIMARY KEY,
            desktop_id INTEGER NOT NULL,  -- no reference: usage outlives a deleted desktop
            desktop_name TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            mode TEXT NOT NULL,
            hourly_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
            monthly_rate DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        # At most one open run per desktop.
        "CREATE UNIQUE INDEX vm_runs_open ON vm_runs(desktop_id) WHERE ended_at IS NULL",
        "CREATE INDEX vm_runs_by_time ON vm_runs(started_at)",
        # How long each start of a VM took (to estimate the next one).
        """CREATE TABLE vm_starts (
            id INTEGER PRIMARY KEY,
            desktop_id INTEGER NOT NULL,  -- no reference: kept like the usage
            at DOUBLE PRECISION NOT NULL,
            seconds DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX vm_starts_by_desktop ON vm_starts(desktop_id, at)",
        # A desktop's sessions (when it was last used, who was connected when).
        "CREATE INDEX sessions_by_desktop ON sessions(desktop_id, started_at)",
    ],
    [
        # Kiosks: enrolled thin clients. Secrets are kept as SHA-256 (pairing code, device
        # credential and its predecessor during rotation); the device's public key (SPKI, DER,
        # base64) proves every sign-in and heartbeat.
        # AUTOINCREMENT: a kiosk's id names its device account (kiosk:<id>), never reused.
        """CREATE TABLE kiosks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            location TEXT NOT NULL DEFAULT '',
            mode TEXT NOT NULL,
            desktop_id INTEGER REFERENCES desktops(id) ON DELETE SET NULL,
            input_allowed BOOLEAN NOT NULL DEFAULT TRUE,
            user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
            created_at DOUBLE PRECISION NOT NULL,
            pair_code_hash TEXT UNIQUE,
            pair_expires DOUBLE PRECISION,
            public_key TEXT,
            cred_hash TEXT UNIQUE,
            prev_cred_hash TEXT,
            cred_rotated_at DOUBLE PRECISION,
            enrolled_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            last_seen DOUBLE PRECISION,
            last_ip TEXT NOT NULL DEFAULT '',
            user_agent TEXT NOT NULL DEFAULT '',
            person TEXT NOT NULL DEFAULT '',
            shown_desktop TEXT NOT NULL DEFAULT ''
        )""",
        # Challenges a kiosk signs to prove it holds its key: single use, short-lived.
        """CREATE TABLE kiosk_challenges (
            kiosk_id INTEGER NOT NULL REFERENCES kiosks(id) ON DELETE CASCADE,
            nonce_hash TEXT NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kiosk_id, nonce_hash)
        )""",
        # A shared kiosk's sign-in, proven by the device, waiting for the person's password or
        # identity provider (single use, short-lived).
        """CREATE TABLE kiosk_grants (
            grant_hash TEXT PRIMARY KEY,
            kiosk_id INTEGER NOT NULL REFERENCES kiosks(id) ON DELETE CASCADE,
            expires DOUBLE PRECISION NOT NULL
        )""",
        "ALTER TABLE web_sessions ADD COLUMN kiosk_id INTEGER",
        # A dedicated kiosk's own session (its device account): no idle or lifetime end; it
        # ends when the kiosk is revoked, deleted or changed.
        "ALTER TABLE web_sessions ADD COLUMN device BOOLEAN NOT NULL DEFAULT FALSE",
        "CREATE INDEX web_sessions_by_kiosk ON web_sessions(kiosk_id)",
    ],
    [
        # Hosts reached over SSH: desktop hosts, jump hosts, remote hypervisors. The private key
        # is encrypted with the gateway's key; host_key holds the pinned known_hosts line(s)
        # ('' until a first-use key is recorded).
        """CREATE TABLE ssh_hosts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            address TEXT NOT NULL,
            port INTEGER NOT NULL DEFAULT 22,
            user_name TEXT NOT NULL,
            key_enc TEXT NOT NULL,
            host_key TEXT NOT NULL DEFAULT '',
            policy TEXT NOT NULL DEFAULT 'pinned',
            jump_id INTEGER REFERENCES ssh_hosts(id),
            created_at DOUBLE PRECISION NOT NULL
        )""",
    ],
]
