"""Running the server: one event loop per process; ``workers`` processes share the port."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tileserver.library import SlideLibrary
from tileserver.security.keys import KeyRing
from tileserver.server.app import create_app
from tileserver.service import ServiceSettings


@dataclass(frozen=True)
class ServeOptions:
    directory: Path
    sources: bool
    host: str
    port: int
    workers: int
    home: Path
    service: ServiceSettings


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that goes away cancels its handler, and with it any
    # render job still waiting for a worker thread.
    return web.AppRunner(app, handler_cancellation=True, access_log=None)


async def _serve(options: ServeOptions, announce: bool) -> None:
    library = SlideLibrary(
        options.directory, sources=options.sources, keyring=KeyRing(options.home)
    )
    runner = make_runner(create_app(library, options.service))
    await runner.setup()
    site = web.TCPSite(
        runner, options.host, options.port, reuse_port=options.workers > 1, backlog=1024
    )
    await site.start()
    if announce:
        port = runner.addresses[0][1]
        count = len(library.slide_ids())
        print(
            f"serving {count} slide(s) from {options.directory} at http://{options.host}:{port}/",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _worker(options: ServeOptions) -> None:
    asyncio.run(_serve(options, announce=False))


def serve(options: ServeOptions) -> int:
    if options.workers <= 1:
        asyncio.run(_serve(options, announce=True))
        return 0
    if options.port == 0:
        raise ValueError("--workers needs an explicit --port")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(options,), daemon=True) for _ in range(options.workers)
    ]
    for proc in procs:
        proc.start()
    print(
        f"serving from {options.directory} at http://{options.host}:{options.port}/ "
        f"with {options.workers} worker processes",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        for proc in procs:
            proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return 0 if all(p.exitcode in (0, -signal.SIGTERM) for p in procs) else 1


if __name__ == "__main__":
    sys.exit("use: tileserver serve")
