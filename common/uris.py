"""URIs and paths as pure functions: ``s3://bucket/key``, ``http(s)://`` and local paths (no I/O; common/storage.py
does the I/O and offers these under its own name too: ``storage.join``)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UsageError


@dataclass(frozen=True)
class S3Path:
    """A parsed ``s3://bucket/key`` URI."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(uri: str) -> bool:
    """True for ``s3://`` (and ``s3a://``/``s3n://``) URIs."""
    return uri.startswith(("s3://", "s3a://", "s3n://"))


def is_http(uri: str) -> bool:
    """True for ``http://`` and ``https://`` URLs."""
    return uri.startswith(("http://", "https://"))


def parse_s3(uri: str) -> S3Path:
    """Split an S3 URI into bucket and key.

    Raises:
        ValueError: the URI has no bucket.
    """
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{uri!r}: S3 URI has no bucket (expected s3://BUCKET/KEY)")
    return S3Path(bucket, key)


def join(prefix: str, *parts: str) -> str:
    """Join URI or path parts with exactly one ``/`` between them."""
    out = prefix.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def as_folder(uri: str) -> str:
    """``uri`` ending in ``/``: a prefix that holds objects (a "folder"); one already ending in ``/`` is kept as
    it is (S3 keys may hold ``//``)."""
    return uri if uri.endswith("/") else uri + "/"


def parent(uri: str) -> str:
    """The folder a file or object is in, without the trailing slash (``.`` for a bare file name)."""
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def object_uri(prefix_uri: str, key: str) -> str:
    """The full URI of a listed key (S3 keys are bucket-relative; local keys are paths)."""
    if is_s3(prefix_uri):
        return f"s3://{parse_s3(prefix_uri).bucket}/{key}"
    return key
