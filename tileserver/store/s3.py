"""The object store contract on S3 and S3-compatible servers (AWS, SeaweedFS, MinIO), through
obstore. This is the only module that imports obstore.

Configuration comes from the usual environment, which obstore reads itself:
AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION (AWS_DEFAULT_REGION); without keys it falls back to the
web-identity or instance credentials AWS provides (asking the EC2 metadata service, which
off AWS costs a connect timeout before the error). Constructor arguments override the
environment. An ``http://`` endpoint is allowed (tests use loopback); production should use
``https://``: the keys sign requests but do not encrypt them.

How the contract maps onto S3:
- ``put`` is one PUT (multipart only above 64 MiB): S3 never shows a partial object.
- ``put_if_absent`` is a PUT with ``If-None-Match: *``, answered 412 when the key exists;
  AWS S3 (since 2024), SeaweedFS (checked with 4.48: of 8 racers exactly one wins) and MinIO
  honour it. A server that ignores the header would overwrite, so stores must live on one
  that honours it. AWS answers 409 to a conditional PUT racing another in flight: that
  writer lost too. If the response to a successful conditional PUT is lost and the retry
  then gets 412, the writer is told False although its bytes are the ones stored.
- ``get_range`` past the end: S3 answers 416 when the range starts at or after the end,
  which is returned as b"".
- Short bodies: a connection cut mid-body breaks HTTP framing, and obstore retries the
  read (then StoreUnavailable). A ranged answer holding fewer bytes than its Content-Range
  announces is well-formed HTTP, which obstore returns as it is, so every read here counts
  the bytes and refuses a shortfall (StoreUnavailable). A whole-object answer can only be
  checked against its own Content-Length; sealed objects (decision 2) catch the rest.
- Errors: a missing object is None (get) or False (exists); a missing bucket, refused
  credentials or a denied operation is StoreError with a one-line reason; connection
  failures, timeouts, throttling and 5xx answers, once the bounded retries are spent, are
  StoreUnavailable. Messages and ``url`` name the bucket and prefix, never credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from tileserver.errors import StoreError, StoreUnavailable
from tileserver.store.objects import check_key, check_prefix

if TYPE_CHECKING:
    from obstore import Bytes, GetOptions, GetResult
    from obstore.store import ClientConfig, RetryConfig, S3Config

MULTIPART_ABOVE = 64 << 20  # one PUT is simpler to retry; multipart only pays for big objects
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>(\w+)</Code>|\(code: (\w+)\)")
_CREDENTIALS = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_CREDENTIAL_CODES = {
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "MissingSecurityHeader",
}
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


class _Unsatisfiable(Exception):
    """S3's 416: the range starts at or after the end of the object."""


@dataclass
class _Bucket:
    """What a store and all its children share: one client for one bucket."""

    store: S3Store
    name: str
    endpoint: str  # for messages: where requests go (no credentials in it)
    verified: bool = False  # the bucket was seen to exist


class S3Objects:
    """Objects under ``s3://bucket/prefix``. Thread-safe; async reads never block the loop."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        retries: int = 3,
        retry_timeout: float = 20.0,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        """``retries`` and ``retry_timeout`` bound how long a failing request is retried
        (with exponential backoff from 100 ms); ``timeout`` bounds one whole request."""
        if prefix:
            check_prefix(prefix if prefix.endswith("/") else f"{prefix}/")
        self._root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        endpoint = endpoint or next(
            (os.environ[name] for name in _ENDPOINT_VARIABLES if os.environ.get(name)), None
        )
        config: S3Config = {}
        for name, value in (
            ("endpoint", endpoint),
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
            ("token", session_token),
            ("region", region),
        ):
            if value:
                config[name] = value  # type: ignore[literal-required]
        client: ClientConfig = {
            "connect_timeout": timedelta(seconds=connect_timeout),
            "timeout": timedelta(seconds=timeout),
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
        }
        retry: RetryConfig = {
            "max_retries": retries,
            "retry_timeout": timedelta(seconds=retry_timeout),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
                "base": 2,
            },
        }
        shown = _strip_userinfo(endpoint) if endpoint else "the AWS default endpoint"
        try:
            store = S3Store(bucket, config=config, client_options=client, retry_config=retry)
        except (BaseError, ValueError) as exc:
            message = f"s3://{bucket}: invalid S3 configuration: {_first_line(exc)}"
            raise StoreError(message) from exc
        self._bucket = _Bucket(store, bucket, shown)

    @classmethod
    def from_url(cls, url: str, **options: object) -> S3Objects:
        """``s3://bucket/prefix`` with ``options`` as for the constructor."""
        if not url.startswith("s3://") or not url[5:].split("/")[0]:
            raise StoreError(f"not an S3 location: {url!r} (expected s3://bucket/prefix)")
        bucket, _, prefix = url[5:].partition("/")
        return cls(bucket, prefix, **options)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        root = self._root.rstrip("/")
        return f"s3://{self._bucket.name}/{root}" if root else f"s3://{self._bucket.name}"

    def child(self, prefix: str) -> S3Objects:
        child = object.__new__(S3Objects)  # same client and bucket state, longer prefix
        child._bucket = self._bucket
        child._root = self._root + check_prefix(prefix)
        return child

    # Reads

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            result = obstore.get(self._bucket.store, path)
            data = result.bytes()
        except FileNotFoundError as exc:
            self._missing(exc)
            return None
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"read {key}")
        return self._checked(data, result, key)

    async def get_async(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            result = await obstore.get_async(self._bucket.store, path)
            data = await result.bytes_async()
        except FileNotFoundError as exc:
            self._missing(exc)
            return None
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"read {key}")
        return self._checked(data, result, key)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        options = self._range(key, start, length)
        if options is None:
            return b"" if self.exists(key) else None
        path = self._path(key)
        try:
            result = obstore.get(self._bucket.store, path, options=options)
            data = result.bytes()
        except FileNotFoundError as exc:
            self._missing(exc)
            return None
        except (BaseError, OSError, ValueError) as exc:
            try:
                self._fail(exc, f"read {key}", ranged=True)
            except _Unsatisfiable:
                return b""
        return self._checked(data, result, key)

    async def get_range_async(self, key: str, start: int, length: int) -> bytes | None:
        options = self._range(key, start, length)
        if options is None:  # nothing to read, but a missing object is still None
            return None if await self.get_async(key) is None else b""
        path = self._path(key)
        try:
            result = await obstore.get_async(self._bucket.store, path, options=options)
            data = await result.bytes_async()
        except FileNotFoundError as exc:
            self._missing(exc)
            return None
        except (BaseError, OSError, ValueError) as exc:
            try:
                self._fail(exc, f"read {key}", ranged=True)
            except _Unsatisfiable:
                return b""
        return self._checked(data, result, key)

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._bucket.store, self._path(key))
        except FileNotFoundError as exc:
            self._missing(exc)
            return False
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"look up {key}")
        return True

    # Writes

    def put(self, key: str, data: bytes) -> None:
        try:
            obstore.put(
                self._bucket.store,
                self._path(key),
                data,
                use_multipart=len(data) > MULTIPART_ABOVE,
            )
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"write {key}")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            obstore.put(self._bucket.store, self._path(key), data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"write {key}")
        return True

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._bucket.store, self._path(key))
        except FileNotFoundError as exc:
            self._missing(exc)  # deleting what is not there is fine, unless no bucket
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"delete {key}")

    # Listing (children first: below, ``list`` is the method's name)

    def children(self, prefix: str = "") -> list[str]:
        base = self._root + check_prefix(prefix)
        try:
            found = obstore.list_with_delimiter(self._bucket.store, base or None)
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"list {prefix or '/'}")
        return sorted(name.rstrip("/").rpartition("/")[2] for name in found["common_prefixes"])

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = self._root + check_prefix(prefix)
        skip = len(self._root)
        keys: list[str] = []
        try:
            for chunk in obstore.list(self._bucket.store, base or None):
                keys.extend(meta["path"][skip:] for meta in chunk)
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, f"list {prefix or '/'}")
        # Sorted here: S3 sorts by UTF-8 bytes, but not every compatible server does.
        yield from sorted(keys)

    # Helpers

    def _path(self, key: str) -> str:
        return self._root + check_key(key)

    @staticmethod
    def _range(key: str, start: int, length: int) -> GetOptions | None:
        if start < 0 or length < 0:
            raise StoreError(f"invalid range {start}+{length} of {key}")
        # S3 cannot express an empty range; the caller only needs to know the key exists.
        return {"range": (start, start + length)} if length else None

    def _checked(self, data: Bytes, result: GetResult, key: str) -> bytes:
        """The bytes, if there are as many as the response promised."""
        start, end = result.range
        if len(data) != end - start:
            raise StoreUnavailable(
                f"{self.url}: short read of {key} ({len(data)} of the {end - start} bytes "
                "the response announced)"
            )
        return bytes(data)

    def _missing(self, exc: FileNotFoundError) -> None:
        """Return for a missing object; raise if it is the bucket that is missing (HEAD
        answers carry no error code, so that is asked once per bucket)."""
        codes = _codes(str(exc))
        if "NoSuchBucket" in codes:
            self._no_bucket(exc)
        if "NoSuchKey" not in codes and not self._bucket.verified:
            self._verify_bucket()

    def _verify_bucket(self) -> None:
        try:
            obstore.get(self._bucket.store, f"{self._root}.tileserver-bucket-check")
        except FileNotFoundError as exc:
            if "NoSuchBucket" in _codes(str(exc)):
                self._no_bucket(exc)
        except (BaseError, OSError, ValueError) as exc:
            self._fail(exc, "check the bucket")
        self._bucket.verified = True

    def _no_bucket(self, exc: Exception) -> NoReturn:
        raise StoreError(
            f"{self.url}: bucket {self._bucket.name} does not exist at {self._bucket.endpoint}"
        ) from exc

    def _fail(self, exc: Exception, what: str, *, ranged: bool = False) -> NoReturn:
        """Raise the StoreError that ``exc`` stands for (_Unsatisfiable for a ranged read's
        416, which the caller turns into b"")."""
        text = str(exc)
        status_match = _STATUS.search(text)
        status = int(status_match.group(1)) if status_match else None
        codes = _codes(text)
        if ranged and (status == 416 or "InvalidRange" in codes):
            raise _Unsatisfiable from exc
        if "NoSuchBucket" in codes:
            self._no_bucket(exc)
        if codes & _CREDENTIAL_CODES or isinstance(exc, UnauthenticatedError):
            raise StoreError(
                f"{self.url}: credentials rejected ({_CREDENTIALS}, AWS_SESSION_TOKEN)"
            ) from exc
        if codes & _DENIED_CODES or isinstance(exc, PermissionDeniedError) or status == 403:
            raise StoreError(f"{self.url}: access denied to {what} ({_CREDENTIALS})") from exc
        if status is not None and (status >= 500 or status in (408, 429)):
            raise StoreUnavailable(
                f"{self.url}: cannot {what}: S3 at {self._bucket.endpoint} answered HTTP "
                f"{status}{_retries(text)}"
            ) from exc
        if status is None and _is_transport(text):
            raise StoreUnavailable(
                f"{self.url}: cannot {what}: S3 at {self._bucket.endpoint}: "
                f"{_transport_reason(text)}{_retries(text)}"
            ) from exc
        if status is not None:
            raise StoreError(f"{self.url}: cannot {what}: HTTP {status} {' '.join(codes)}") from exc
        raise StoreError(f"{self.url}: cannot {what}: {_first_line(exc)}") from exc


def _codes(text: str) -> set[str]:
    return {a or b for a, b in _CODE.findall(text)}


def _is_transport(text: str) -> bool:
    return any(
        marker in text
        for marker in (
            "HTTP error",
            "error sending request",
            "timed out",
            "TimedOut",
            "connection",
            "Connection",
            "body error",
            "IncompleteMessage",
        )
    )


def _transport_reason(text: str) -> str:
    for marker, reason in (
        ("Connection refused", "unreachable (connection refused)"),
        ("TimedOut", "timed out"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("IncompleteMessage", "answer cut off"),
        ("body error", "answer cut off"),
    ):
        if marker in text:
            return reason
    return "connection failed"


def _retries(text: str) -> str:
    found = re.search(r"after (\d+) retries", text)
    return f", after {found.group(1)} retries" if found else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _strip_userinfo(endpoint: str) -> str:
    scheme, sep, rest = endpoint.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else endpoint
