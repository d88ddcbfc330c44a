"""Store locations: a plain path or ``file://`` URL is a local directory, ``s3://bucket/prefix``
is S3 (endpoint and credentials from the AWS_* environment, see tileserver.store.s3)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from tileserver.errors import StoreError
from tileserver.store.local import LocalObjects
from tileserver.store.objects import ObjectStore


def _scheme(text: str) -> str:
    # "C:\\..." or a relative name is a path; only "x://" is a URL.
    return text.split("://", 1)[0].lower() if "://" in text else ""


def open_location(location: str | Path) -> ObjectStore:
    """The object store at ``location``. Opening contacts nothing: a missing directory,
    bucket or credentials show on first use. Directories appear on the first write; buckets
    are made by whoever administers them, never by the tile server."""
    text = str(location)
    scheme = _scheme(text)
    if not scheme:
        return LocalObjects(Path(text))
    if scheme == "file":
        url = urlsplit(text)
        if url.netloc not in ("", "localhost"):
            raise StoreError(f"unsupported store location {text!r}: file:// URLs name no host")
        return LocalObjects(Path(unquote(url.path)))
    if scheme == "s3":
        from tileserver.store.s3 import S3Objects  # obstore loads only when S3 is used

        return S3Objects.from_url(text)
    raise StoreError(
        f"unsupported store location {scheme}:// (use a directory, file:// or s3://bucket/prefix)"
    )


def is_remote(location: str | Path) -> bool:
    """Whether the location is reached over the network (no local path behind it)."""
    return _scheme(str(location)) not in ("", "file")


def describe_location(location: str | Path) -> str:
    """The location for messages and logs: user, password and query never shown."""
    text = str(location)
    if not _scheme(text):
        return text
    url = urlsplit(text)
    host = url.hostname or ""
    if url.port:
        host = f"{host}:{url.port}"
    return f"{url.scheme}://{host}{url.path}"
