"""Batch conversion on a Dask distributed cluster (decision 8): one task per slide. The only
module that imports dask.

Each task runs ``tileserver convert`` for its slide in a fresh process on the worker: the
same per-slide child under limits as on one machine, a clean interpreter (a Dask worker has
threads of its own, so forking it is unsafe), and a process that dies with its worker. When a
worker dies mid-slide the scheduler runs the task again on another worker, and the
conversion resumes from the shards already written. Channel (fluorescence) slides and
z-stacks need nothing more: the task runs the same converter. Slides must be at paths every
worker sees (or URLs); for encrypted stores, workers need the key-encryption key (the same
token, KMS or KEK file): with ``--keys store`` (the default) each slide's wrapped data key
goes into its store, so their own TILESERVER_HOMEs need not be shared (decision 0004).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster, as_completed

from tileserver.errors import ConfigError

# The scheduler's and workers' INFO lines would bury the converter's own output.
logging.getLogger("distributed").setLevel(logging.WARNING)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Outcome:
    slide: str
    status: str  # "converted", "skipped" (already complete) or "failed"
    message: str  # the converter's summary line or its one-line error


def _die_with_worker() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def convert_task(slide: str, flags: Sequence[str], home: str | None) -> Outcome:
    """Runs on a worker: convert one slide with the CLI, in a process of its own."""
    env = dict(os.environ)
    if home is not None:
        env["TILESERVER_HOME"] = home
    done = subprocess.run(
        [sys.executable, "-m", "tileserver.cli", "convert", "--quiet", slide, *flags],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_die_with_worker,
        check=False,
    )
    lines = [*done.stdout.splitlines(), *done.stderr.splitlines()]
    if done.returncode == 0:
        said = next((line for line in lines if line.strip()), "")
        status = "skipped" if "already converted" in said else "converted"
        return Outcome(slide, status, said)
    errors = [line for line in lines if line.startswith("tileserver: error:")]
    reason = errors[0] if errors else f"converter exited with status {done.returncode}"
    return Outcome(slide, "failed", reason.removeprefix("tileserver: error: "))


def _local_cluster(scheduler: str) -> LocalCluster | None:
    """``local:N``: a LocalCluster of N worker processes on this machine."""
    if not scheduler.startswith("local:"):
        return None
    count = scheduler.removeprefix("local:")
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--scheduler {scheduler}: expected local:N with N >= 1")
    return LocalCluster(
        n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=":0"
    )


def convert_on_cluster(
    scheduler: str,
    slides: Sequence[str],
    flags: Sequence[str],
    home: str | None,
    on_done: Callable[[Outcome], None],
    on_start: Callable[[str], None] | None = None,
    connect_timeout: float = 30.0,
) -> list[Outcome]:
    """Convert every slide on the cluster (``local:N`` or a scheduler's address), calling
    ``on_done`` as each finishes. A task whose worker dies is run again elsewhere by the
    scheduler; a slide that fails is reported, not retried."""
    cluster = _local_cluster(scheduler)
    try:
        client = Client(cluster if cluster is not None else scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    try:
        if on_start is not None:
            on_start(client.dashboard_link)
        futures = [
            client.submit(convert_task, slide, list(flags), home, pure=False) for slide in slides
        ]
        outcomes = []
        for future, slide in _completed(futures, slides):
            try:
                outcome: Outcome = future.result()
            except Exception as exc:  # the task could not run (e.g. workers kept dying)
                outcome = Outcome(slide, "failed", f"{type(exc).__name__}: {exc}")
            outcomes.append(outcome)
            on_done(outcome)
        return outcomes
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _completed(futures: list[Any], slides: Sequence[str]) -> Iterator[tuple[Any, str]]:
    """(future, its slide) in the order they finish."""
    slide_of = {future.key: slide for future, slide in zip(futures, slides, strict=True)}
    for future in as_completed(futures):
        yield future, slide_of[future.key]
