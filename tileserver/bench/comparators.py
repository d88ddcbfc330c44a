"""Comparator servers on the same slide, each run in a subprocess on 127.0.0.1.

* ``baseline``: what OpenSlide's classic DeepZoom example server does on every request,
  ``DeepZoomGenerator(OpenSlide(path), tile_size=254, overlap=1, limit_bounds=False)``,
  ``get_tile`` then a JPEG encode at quality 75, serving ``/slide.dzi`` and
  ``/slide_files/{level}/{col}_{row}.jpeg``. It runs on aiohttp, the framework of our server,
  with the tile work in a thread pool (the example's Flask server runs a thread per request;
  OpenSlide and Pillow release the GIL while decoding and encoding), so a comparison with ours
  measures the per-tile work rather than the web framework.
* ``static``: every tile of the same grid rendered once (``prerender``, the same bytes the
  baseline sends) and served by aiohttp's ``web.static``: the floor for a Python server.
* ``nginx``: the same directory behind ``/usr/sbin/nginx`` when it is installed (information
  only; never installed by us).
* ``lighttpd``: any directory of files behind Debian's ``/usr/sbin/lighttpd`` over HTTPS
  (``scripts/setup-services.sh`` installs it): the static floor that a secure deployment of
  ours is held to (benchmarks/bench_secure_path.py).

Each context manager starts its server (``python -m tileserver.bench.comparators``), waits
until ``/slide.dzi`` answers 200 and yields a ``Server``; leaving the block stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import web

SLIDE = "slide"
TILE_SIZE, OVERLAP, QUALITY, FORMAT = 254, 1, 75, "jpeg"
NGINX = Path("/usr/sbin/nginx")
LIGHTTPD = Path("/usr/sbin/lighttpd")
LIGHTTPD_TLS = Path("/usr/lib/lighttpd/mod_openssl.so")
_COMPLETE = ".complete"


@dataclass(frozen=True)
class Server:
    name: str
    url: str  # the .dzi URL
    pid: int


def _generator(slide: Path) -> Any:  # openslide.deepzoom.DeepZoomGenerator
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    return DeepZoomGenerator(
        OpenSlide(str(slide)), tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False
    )


def _encode(dz: Any, level: int, col: int, row: int) -> bytes:
    buf = BytesIO()
    dz.get_tile(level, (col, row)).save(buf, FORMAT, quality=QUALITY)
    return buf.getvalue()


# -- the servers (run in the child process) -----------------------------------------------
def baseline_app(slide: Path) -> web.Application:
    dz = _generator(slide)
    pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4))
    dzi = dz.get_dzi(FORMAT)

    async def get_dzi(request: web.Request) -> web.Response:
        return web.Response(text=dzi, content_type="application/xml")

    async def get_tile(request: web.Request) -> web.Response:
        m = request.match_info
        if m["fmt"].lower() not in ("jpeg", "png"):
            raise web.HTTPNotFound()
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(
                pool, _encode, dz, int(m["level"]), int(m["col"]), int(m["row"])
            )
        except ValueError:  # the example's abort(404) for an invalid level or address
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type=f"image/{FORMAT}")

    async def shutdown(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application()
    app.router.add_get(f"/{SLIDE}.dzi", get_dzi)
    app.router.add_get(
        rf"/{SLIDE}_files/{{level:\d+}}/{{col:\d+}}_{{row:\d+}}.{{fmt:[A-Za-z]+}}", get_tile
    )
    app.on_shutdown.append(shutdown)
    return app


def static_app(tiles: Path) -> web.Application:
    app = web.Application()
    dzi = (tiles / f"{SLIDE}.dzi").read_text()

    async def get_dzi(request: web.Request) -> web.Response:
        return web.Response(text=dzi, content_type="application/xml")

    app.router.add_get(f"/{SLIDE}.dzi", get_dzi)
    app.router.add_static(f"/{SLIDE}_files", tiles / f"{SLIDE}_files")
    return app


def prerender(slide: Path, out: Path, *, workers: int | None = None) -> Path:
    """Write ``out/slide.dzi`` and every tile the baseline would send; reused once complete."""
    if (out / _COMPLETE).exists():
        return out
    dz = _generator(slide)
    files = out / f"{SLIDE}_files"
    jobs = []
    for level in range(dz.level_count):
        cols, rows = dz.level_tiles[level]
        (files / str(level)).mkdir(parents=True, exist_ok=True)
        jobs += [(level, c, r) for r in range(rows) for c in range(cols)]

    def write(job: tuple[int, int, int]) -> None:
        level, col, row = job
        (files / str(level) / f"{col}_{row}.{FORMAT}").write_bytes(_encode(dz, *job))

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in pool.map(write, jobs, chunksize=64):
            pass
    (out / f"{SLIDE}.dzi").write_text(dz.get_dzi(FORMAT))
    (out / _COMPLETE).write_text(f"{len(jobs)} tiles from {slide.name}\n")
    return out


def _child(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tileserver.bench.comparators")
    p.add_argument("kind", choices=("baseline", "static"))
    p.add_argument("path", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path)
    args = p.parse_args(argv)
    app = baseline_app(args.path) if args.kind == "baseline" else static_app(args.path)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.replace(args.port_file)
    web.run_app(app, sock=sock, access_log=None, print=None)
    return 0


# -- the parent side ----------------------------------------------------------------------
def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def _running(
    name: str,
    cmd: list[str],
    port_of: Callable[[], int | None],
    host: str,
    timeout: float,
    log: Path,
    path: str = f"/{SLIDE}.dzi",
    env: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Server]:
    with log.open("wb") as out:
        # A session of its own: lighttpd's master signals its whole process group on exit.
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} server exited with {proc.returncode}: "
                    f"{log.read_text(errors='replace')[-2000:]}"
                )
            port = port_of()
            if port:
                scheme = "https" if tls is not None else "http"
                url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}{path}"
                if _answers(url, tls):
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{name} server did not answer within {timeout:.0f} s")
        yield Server(name, url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _python_server(kind: str, path: Path, host: str, port: int, timeout: float) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        port_file = Path(tmp) / "port"
        cmd = [sys.executable, "-m", "tileserver.bench.comparators", kind, str(path)]
        cmd += ["--host", host, "--port", str(port), "--port-file", str(port_file)]

        def port_of() -> int | None:
            return int(port_file.read_text()) if port_file.exists() else None

        with _running(kind, cmd, port_of, host, timeout, Path(tmp) / "log") as server:
            yield server


def baseline_server(
    slide: Path, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 60
) -> AbstractContextManager[Server]:
    """The OpenSlide DeepZoom example's per-request work, as a running server."""
    return _python_server("baseline", Path(slide).resolve(), host, port, timeout)


def static_server(
    tiles: Path, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 60
) -> AbstractContextManager[Server]:
    """``prerender``'s directory behind aiohttp ``web.static``."""
    return _python_server("static", Path(tiles).resolve(), host, port, timeout)


@contextmanager
def ours_server(
    stores: Path,
    home: Path,
    slide_id: str,
    *extra: str,
    host: str = "127.0.0.1",
    timeout: float = 60,
) -> Iterator[Server]:
    """``tileserver serve`` over ``stores`` (plain HTTP, no auth: loopback benchmarks only),
    answering the slide's own DeepZoom grid."""
    port = _free_port(host)
    cmd = [
        sys.executable,
        "-m",
        "tileserver.cli",
        "serve",
        str(stores),
        "--host",
        host,
        "--port",
        str(port),
        "--insecure-http",
        "--no-auth",
        *extra,
    ]
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    with (
        tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp,
        _running(
            "ours",
            cmd,
            lambda: port,
            host,
            timeout,
            Path(tmp) / "log",
            f"/deepzoom/{slide_id}.dzi",
            env,
        ) as server,
    ):
        yield server


def nginx_available() -> bool:
    return NGINX.exists()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nginx_server(
    tiles: Path, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30
) -> Iterator[Server]:
    """``prerender``'s directory behind nginx (only where ``/usr/sbin/nginx`` exists)."""
    if not nginx_available():
        raise FileNotFoundError(f"{NGINX} is not installed")
    port = port or _free_port(host)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        temps = " ".join(
            f"{k}_temp_path {tmp}/{k};"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            f"worker_processes {os.cpu_count() or 1}; daemon off; pid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/error.log;\nevents {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; sendfile on; {temps}\n"
            "  types { image/jpeg jpeg; application/xml dzi; }\n"
            f"  server {{ listen {listen}; root {Path(tiles).resolve()}; }} }}\n"
        )
        cmd = [str(NGINX), "-p", tmp, "-c", str(conf)]
        with _running("nginx", cmd, lambda: port, host, timeout, Path(tmp) / "log") as server:
            yield server


def lighttpd_available() -> bool:
    return LIGHTTPD.exists() and LIGHTTPD_TLS.exists()


@contextmanager
def lighttpd_server(
    root: Path,
    path: str,
    cert: Path,
    key: Path,
    *,
    workers: int = 2,
    host: str = "127.0.0.1",
    timeout: float = 30,
) -> Iterator[Server]:
    """``root`` behind lighttpd over HTTPS with ``cert``/``key``: TLS 1.2+, ECDHE with AEAD,
    P-256 (the policy of our server, security/tls.py), HTTP/1.1 as ours, ``workers``
    processes; ready once ``path`` answers 200."""
    if not lighttpd_available():
        raise FileNotFoundError(
            f"{LIGHTTPD} with {LIGHTTPD_TLS.name} is not installed: run scripts/setup-services.sh"
        )
    port = _free_port(host)
    with tempfile.TemporaryDirectory(prefix="bench-lighttpd-") as tmp:
        conf = Path(tmp) / "lighttpd.conf"
        conf.write_text(
            f'server.document-root = "{Path(root).resolve()}"\n'
            f'server.bind = "{host}"\nserver.port = {port}\n'
            'server.modules = ("mod_openssl")\n'
            f"server.max-worker = {workers}\n"
            "server.max-keep-alive-requests = 65535\nserver.max-keep-alive-idle = 10\n"
            'server.feature-flags += ("server.h2proto" => "disable")\n'
            f'server.errorlog = "{tmp}/error.log"\n'
            'mimetype.assign = (".jpeg" => "image/jpeg", ".jpg" => "image/jpeg", '
            '".dzi" => "application/xml", ".json" => "application/json")\n'
            f'ssl.engine = "enable"\nssl.pemfile = "{cert}"\nssl.privkey = "{key}"\n'
            'ssl.openssl.ssl-conf-cmd = ("MinProtocol" => "TLSv1.2", '
            '"CipherString" => "ECDHE+AESGCM:ECDHE+CHACHA20", "Groups" => "P-256")\n'
        )
        cmd = [str(LIGHTTPD), "-D", "-f", str(conf)]
        context = ssl.create_default_context(cafile=str(cert))
        log = Path(tmp) / "log"
        with _running("lighttpd", cmd, lambda: port, host, timeout, log, path, tls=context) as s:
            yield s


if __name__ == "__main__":
    sys.exit(_child())
