"""Settings read once from the environment: where server state lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tileserver.config import Settings
from tileserver.errors import ConfigError

URL = "postgresql://tiles@db.example:5432/tiles?sslmode=verify-full"


def test_state_is_sqlite_under_home_unless_a_database_is_named(tmp_path: Path) -> None:
    settings = Settings.from_env({"TILESERVER_HOME": str(tmp_path)})
    assert settings.state_database() == tmp_path / "auth.db"
    named = Settings.from_env({"TILESERVER_HOME": str(tmp_path), "TILESERVER_DATABASE": URL})
    assert named.state_database() == URL
    assert settings.with_database(URL).state_database() == URL  # --database
    assert URL not in repr(named)  # the environment's URL may carry a password


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://tiles:s3cret-pw@db.example/tiles",
        "postgresql://tiles@db.example/tiles?password=s3cret-pw",
    ],
)
def test_a_password_on_the_command_line_is_refused(url: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"TILESERVER_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="PGPASSFILE") as refused:
        settings.with_database(url)
    assert "s3cret-pw" not in str(refused.value)
    env = {"TILESERVER_HOME": str(tmp_path), "TILESERVER_DATABASE": url}
    assert Settings.from_env(env).state_database() == url  # from the environment it is fine


def test_only_postgresql_urls_name_a_database(tmp_path: Path) -> None:
    env = {"TILESERVER_HOME": str(tmp_path), "TILESERVER_DATABASE": "mysql://u:pw@h/db"}
    with pytest.raises(ConfigError, match="postgresql://") as refused:
        Settings.from_env(env)
    assert "pw@" not in str(refused.value)
