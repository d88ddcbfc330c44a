"""Slides read from S3 URLs (a real SeaweedFS): copied locally in ranged reads, converted,
and the same answers as for a local file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import cli
from tests.stores import complete_stores
from tileserver.errors import SlideNotFound, UnsupportedFormat
from tileserver.sources import remote
from tileserver.store.location import open_location


def test_a_slide_url_is_copied_in_ranged_pieces_and_deleted_after(
    s3_env: str, synthetic_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_svs.read_bytes()
    open_location(s3_env).put("slide.svs", data)
    monkeypatch.setattr(remote, "PIECE", 100_000)  # several pieces, the last one short
    with remote.local_copy(f"{s3_env}/slide.svs") as path:
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o600
    assert not path.exists() and not path.parent.exists()
    with (
        pytest.raises(SlideNotFound, match=r"missing\.svs: no such object"),
        remote.local_copy(f"{s3_env}/missing.svs"),
    ):
        pass
    with (
        pytest.raises(UnsupportedFormat, match="single-file"),
        remote.local_copy(f"{s3_env}/case.mrxs"),
    ):
        pass


def test_convert_reads_slides_from_s3(
    s3_env: str, synthetic_svs: Path, keyring: object, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    open_location(s3_env).put("synthetic.svs", synthetic_svs.read_bytes())
    out = tmp_path / "stores"
    url = f"{s3_env}/synthetic.svs"
    done = cli(home, "convert", "--quiet", url, f"{s3_env}/nothing.svs", "--out", str(out))
    assert done.returncode == 1, done.stderr  # one of two failed
    assert "nothing.svs: no such object" in done.stderr
    assert "Traceback" not in done.stderr
    (slide_id,) = complete_stores(out)
    assert done.stdout.startswith(f"synthetic.svs: {slide_id}")
    again = cli(home, "convert", "--quiet", url, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"synthetic.svs: already converted as {slide_id}" in again.stdout


def test_cluster_workers_fetch_their_own_slides_from_s3(
    s3_env: str, synthetic_svs: Path, keyring: object, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    open_location(s3_env).put("synthetic.svs", synthetic_svs.read_bytes())
    out = f"{s3_env}/stores"
    url = f"{s3_env}/synthetic.svs"
    done = cli(home, "convert", "--quiet", url, "--out", out, "--scheduler", "local:1")
    assert done.returncode == 0, done.stderr
    assert "1 converted, 0 skipped (already complete), 0 failed" in done.stderr
    assert len(complete_stores(out)) == 1
