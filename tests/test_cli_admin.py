"""The administrative flow the demo uses: convert into a collection, add a user who has not
enrolled yet, grant, and a loopback login link (regression: each step once failed)."""

from __future__ import annotations

from pathlib import Path

from tests.cli import cli
from tileserver.security.accounts import Accounts
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import is_slide_id


def test_convert_into_collection_then_grant_a_pending_user(
    synthetic_svs: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert cli(home, "keys", "init").returncode == 0
    out = tmp_path / "stores"
    converted = cli(
        home, "convert", "--quiet", str(synthetic_svs), "--out", str(out), "--collection", "case-7"
    )
    assert converted.returncode == 0, converted.stderr
    (slide_id,) = [p.name for p in out.iterdir() if is_slide_id(p.name)]
    added = cli(home, "users", "add", "dana")
    assert added.returncode == 0 and "/login?setup=" in added.stdout.splitlines()[-1]
    assert "enrolling" in cli(home, "users", "list").stdout
    granted = cli(home, "users", "grant", "dana", "case-7", "--labels")
    assert granted.returncode == 0, granted.stderr
    link = cli(home, "users", "login-link", "dana")
    assert link.returncode == 0 and "/auth/link?token=" in link.stdout
    accounts = Accounts(home / "auth.db", KeyRing(home).service_key("totp"))
    assert accounts.collection_of(slide_id) == "case-7"
    assert accounts.grant_of("dana", "case-7") == (True, True)
    assert cli(home, "users", "add", "dana").returncode == 1  # no duplicate
    assert cli(home, "users", "grant", "nobody", "case-7").returncode == 1
