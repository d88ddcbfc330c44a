"""``tileserver bench load`` against the real comparator servers on a small synthetic slide."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sample_data import write_svs
from tileserver.bench import comparators
from tileserver.bench.cli import add_commands
from tileserver.bench.report import markdown, replace_section

RUN_FIELDS = {
    "trace",
    "concurrency",
    "pass",
    "requests",
    "ok",
    "errors",
    "statuses",
    "bytes",
    "duration_s",
    "tiles_per_s",
    "latency_ms",
    "latency_cdf_ms",
    "viewports",
    "viewport_ms",
    "first_request_fraction",
    "stopped_by",
    "client_cpu_fraction",
}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_svs(tmp_path_factory.mktemp("bench") / "slide.svs", 2000, 1500, seed=2)


@pytest.fixture(scope="module")
def static_url(slide: Path) -> Iterator[str]:
    tiles = comparators.prerender(slide, slide.parent / "static")
    with comparators.static_server(tiles) as server:
        yield server.url


@pytest.fixture(scope="module")
def baseline_url(slide: Path) -> Iterator[str]:
    with comparators.baseline_server(slide) as server:
        yield server.url


def bench_load(url: str, out: Path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    argv = ["bench", "load", url, "--json", str(out), *extra]
    argv += ["--trace", "pan,random", "--concurrency", "1,4", "--max-requests", "30"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("server", ["static", "baseline"])
def test_bench_load_against_comparator(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{server}_url")
    report = bench_load(url, tmp_path / "out.json")
    assert report["target"] | {"url": None} == {
        "url": None,
        "protocol": "deepzoom",
        "width": 2000,
        "height": 1500,
        "tile": [254, 254],
        "levels": 12,
    }
    runs = report["runs"]
    cells = [(r["trace"], r["concurrency"], r["pass"]) for r in runs]
    assert cells == [(t, c, p) for t in ("pan", "random") for c in (1, 4) for p in ("cold", "warm")]
    for run in runs:
        assert set(run) >= RUN_FIELDS
        assert run["errors"] == 0 and run["requests"] == run["ok"] == 30
        assert run["statuses"] == {"200": 30}
        assert run["stopped_by"] == "max_requests"
        assert run["tiles_per_s"] > 0 and run["bytes"] > 30 * 500
        lat = run["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert len(run["latency_cdf_ms"]) == 101
        if run["trace"] == "pan":
            assert run["viewports"] >= 1 and run["viewport_ms"]["p50"] >= lat["p50"]
        else:
            assert run["viewports"] is None and run["viewport_ms"] is None
    # Within one invocation only the very first pass of a trace requests new tiles.
    assert runs[0]["first_request_fraction"] == 1 and runs[1]["first_request_fraction"] == 0
    assert runs[4]["first_request_fraction"] > 0  # random: some tiles pan did not ask for
    # The same tiles every pass: the byte counts agree.
    assert len({r["bytes"] for r in runs[:4]}) == 1


def test_static_serves_the_baseline_bytes(
    static_url: str, baseline_url: str, tmp_path: Path
) -> None:
    a = bench_load(static_url, tmp_path / "a.json", "--passes", "warm")
    b = bench_load(baseline_url, tmp_path / "b.json", "--passes", "warm")
    assert [r["bytes"] for r in a["runs"]] == [r["bytes"] for r in b["runs"]]


def test_results_section_is_replaced_and_report_renders(static_url: str, tmp_path: Path) -> None:
    one = bench_load(static_url, tmp_path / "a.json", "--passes", "cold,warm")
    results = {
        "command": "cmd",
        "machine": {"CPU": "x"},
        "slide": {"file": "slide.svs", "bytes": 1, "width": 2000, "height": 1500},
        "settings": {
            "traces": ["pan", "random"],
            "concurrency": [1, 4],
            "max_requests": 30,
            "max_seconds": 60,
        },
        "servers": {
            "static": {"url": static_url, "runs": one["runs"]},
            "baseline": {"url": "u", "runs": one["runs"]},
        },
    }
    text = markdown(results)
    assert "| pan | 1 | 1.00x | 1.00x |" in text and "### Trace `random`" in text
    old = "# R\n\n<!-- convert:start -->\nC\n<!-- convert:end -->\n"
    new = replace_section(old, "server", "S1")
    assert new == old + "\n<!-- server:start -->\nS1\n<!-- server:end -->\n"
    assert replace_section(new, "server", "S2") == new.replace("S1", "S2")


def test_a_pass_stops_by_itself_at_max_seconds(static_url: str, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "t.json"
    argv = ["bench", "load", static_url, "--json", str(out), "--trace", "random"]
    args = parser.parse_args([*argv, "--concurrency", "1", "--max-seconds", "0.01"])
    assert args.func(args) == 0
    cold, warm = json.loads(out.read_text())["runs"]
    assert cold["stopped_by"] == "max_seconds" and 0 < cold["requests"] < 60
    assert cold["errors"] == 0 and warm["requests"] <= cold["requests"]
