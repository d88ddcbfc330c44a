"""Servers for the tests: the real CLI (`tileserver serve`) in a child process on loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.corpus import SLIDES
from tileserver.pyramid.builder import convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.slide_ids import new_slide_id
from tileserver.sources import open_slide
from tileserver.store.local import LocalObjects


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Server:
    base: str
    home: Path
    directory: Path | str

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Response:
        url = urlsplit(self.base)
        if url.scheme == "https":
            # Verify against the server's own self-signed certificate, as a client should.
            context = ssl.create_default_context(cafile=self.home / "tls" / "cert.pem")
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname, url.port, timeout=60, context=context
            )
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            return Response(
                reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
            )
        finally:
            conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", path, headers)

    def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        return self.request("POST", path, headers, body)


@dataclass(frozen=True)
class Stores:
    directory: Path
    home: Path
    synthetic: str  # slide IDs
    cmu: str | None


def converted(
    slide: Path, out: Path, keyring: KeyRing | None, options: ConvertOptions | None = None
) -> str:
    """The ID of a new slide: ``slide`` converted into ``out/<ID>`` (encrypted unless
    ``keyring`` is None)."""
    slide_id = new_slide_id()
    with open_slide(slide) as source:
        convert(
            source, LocalObjects(out / slide_id), slide_id, options or ConvertOptions(), keyring
        )
    return slide_id


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory, synthetic_svs: Path) -> Stores:
    root = tmp_path_factory.mktemp("served")
    home = root / "home"
    keyring = KeyRing(home)
    keyring.initialise()
    out = root / "stores"
    ids = {}
    slides = {"synthetic": synthetic_svs}
    if (SLIDES / "svs" / "CMU-1-Small-Region.svs").exists():
        slides["cmu"] = SLIDES / "svs" / "CMU-1-Small-Region.svs"
    for name, path in slides.items():
        ids[name] = converted(path, out, keyring)
    return Stores(out, home, ids["synthetic"], ids.get("cmu"))


@contextlib.contextmanager
def run_server(
    directory: Path | str, home: Path, *args: str, secure: bool = False
) -> Iterator[Server]:
    """The real server; protocol tests run it over HTTP without auth (loopback only)."""
    env = {**os.environ, "TILESERVER_HOME": str(home)}
    flags = [] if secure else ["--insecure-http", "--no-auth"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tileserver.cli",
            "serve",
            str(directory),
            "--port",
            "0",
            *flags,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if "://" not in line:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"server did not start: {line}{err}")
        yield Server(line.split(" at ")[-1].strip().rstrip("/"), home, directory)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture(scope="session")
def server(stores: Stores) -> Iterator[Server]:
    with run_server(stores.directory, stores.home) as srv:
        yield srv
