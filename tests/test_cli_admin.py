"""The administrative flow the demo uses: convert into a collection, add a user who has not
enrolled yet, grant, and a loopback login link (regression: each step once failed)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import cli
from tileserver.security.accounts import Accounts
from tileserver.security.keys import KeyRing
from tileserver.security.slide_labels import LabelStore, SlideLabels
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


def test_slides_label_sets_case_and_labels_audited_and_refuses_bad_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "keys", "init").returncode == 0
    slide_id = "0123456789abcdef" * 2
    done = cli(
        home, "slides", "label", slide_id, "--case", "S26-0042", "--block", "A2",
        "--stain", "H&E", "--scan-date", "2026-03-01",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{slide_id}: case S26-0042, block A2, stain H&E, scan_date 2026-03-01"
    )
    cleared = cli(home, "slides", "label", slide_id, "--stain", "")  # empty clears one label
    assert cleared.stdout.strip() == f"{slide_id}: block A2, stain -, scan_date 2026-03-01"
    accounts = Accounts(home / "auth.db", KeyRing(home).service_key("totp"))
    assert accounts.collection_of(slide_id) == "S26-0042"
    assert LabelStore(accounts.db).get(slide_id) == SlideLabels("A2", None, "2026-03-01")
    exported = cli(home, "audit", "export")
    changes = [json.loads(line)["detail"] for line in exported.stdout.splitlines()]
    assert {"change": "assigned to collection S26-0042"} in changes
    assert {"change": "labelled", "stain": ""} in changes
    for args, error in [
        (["--scan-date", "2026-02-30"], "scan date must be a day as YYYY-MM-DD, not '2026-02-30'"),
        (["--block", "A\x1b[2J"], "block must be at most 64 printable characters"),
        (["--case", " "], "case must not be empty"),
        ([], "nothing to label: give --case, --block, --stain or --scan-date"),
    ]:
        refused = cli(home, "slides", "label", slide_id, *args)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [f"tileserver: error: {error}"]
    bad_id = cli(home, "slides", "label", "not-a-slide", "--block", "B1")
    assert bad_id.returncode == 1 and "not a slide ID: 'not-a-slide'" in bad_id.stderr
    assert LabelStore(accounts.db).get(slide_id) == SlideLabels("A2", None, "2026-03-01")
