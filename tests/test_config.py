"""Settings: TOML, environment overrides, validation, and secrets that never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings, new_secret_key, render_toml
from gateway.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deskgate.toml"
    path.write_text(text)
    return path


def test_toml_and_environment(tmp_path: Path) -> None:
    key = new_secret_key()
    path = _write(tmp_path, render_toml({"port": 9001, "secret_key": key,
                                         "public_url": "https://desk.example.org"}))
    s = load_settings(path, env={"DESKGATE_SERVER_HOST": "0.0.0.0",
                                 "DESKGATE_SECURITY_LOCKOUT_THRESHOLD": "7"})
    assert (s.port, s.host, s.lockout_threshold) == (9001, "0.0.0.0", 7)
    assert s.data_dir == tmp_path and s.database_path == tmp_path / "deskgate.db"
    assert s.cookie_secure and s.public_origin == "https://desk.example.org"
    assert key not in repr(s) and key not in str(s.secret_key) and key not in repr(s.secret_key)
    assert s.secret_key.reveal() == key


@pytest.mark.parametrize("text,message", [
    ("[server]\nport = 8080\n", "secret_key is empty"),
    ('[security]\nsecret_key = "short"\n', "32 bytes"),
    ("[nonsense]\nx = 1\n", "unknown section"),
    ("[server]\nsecret_key = 'x'\n", "unknown setting"),
    ("[server\n", "deskgate.toml"),
])
def test_bad_files_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, text), env={})


def test_bad_values(tmp_path: Path) -> None:
    path = _write(tmp_path, render_toml({"secret_key": new_secret_key()}))
    with pytest.raises(ConfigError, match="port"):
        load_settings(path, env={"DESKGATE_SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match="public_url"):
        load_settings(path, env={"DESKGATE_SERVER_PUBLIC_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="run `deskgate init`"):
        load_settings(tmp_path / "missing.toml", env={})


def test_rdp_display_base_and_logon_timeout(tmp_path: Path) -> None:
    path = _write(tmp_path, render_toml({"secret_key": new_secret_key()})
                  + "\n[rdp]\nrdp_display_base = 140\nrdp_logon_timeout_seconds = 30\n")
    s = load_settings(path, env={})
    assert (s.rdp_display_base, s.rdp_logon_timeout_seconds, s.display_base) == (140, 30.0, 20)
    # The bases may be equal: the allocator keeps the displays apart (tests/proxy).
    s = load_settings(path, env={"DESKGATE_DESKTOPS_DISPLAY_BASE": "140"})
    assert s.display_base == s.rdp_display_base == 140
    assert load_settings(_write(tmp_path, render_toml({"secret_key": new_secret_key()})),
                         env={}).rdp_display_base == 60  # fmt: skip
    for env, message in (
        ({"DESKGATE_RDP_RDP_DISPLAY_BASE": "0"}, "rdp.rdp_display_base must be an X display number"),
        ({"DESKGATE_RDP_RDP_DISPLAY_BASE": "99999"}, "rdp.rdp_display_base must be an X display number"),
        ({"DESKGATE_RDP_RDP_DISPLAY_BASE": "sixty"}, "rdp_display_base"),
        ({"DESKGATE_DESKTOPS_DISPLAY_BASE": "-1"}, "desktops.display_base must be an X display number"),
        ({"DESKGATE_RDP_RDP_LOGON_TIMEOUT_SECONDS": "0"}, "rdp_logon_timeout_seconds"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(path, env=env)
