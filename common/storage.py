"""Every byte that crosses the network or the disk goes through here: ``s3://``, ``http(s)://`` and local paths.

How a job reaches S3 is its :class:`Store`, built once from its flags and carried in its settings to every
task: the endpoint (``--s3-endpoint-url``, else ``AWS_ENDPOINT_URL``, else AWS), the encryption of every
object it writes (``--sse``) and the retries.  Each function takes it as its ``endpoint_url`` argument (a bare
endpoint string, or None, means the default retries); writes take the encryption as an argument of their own,
so no write is encrypted, or not, by anything but its caller.  Credentials come only from boto3's default
chain.  One client is built per (process, endpoint, retries) and reused: a client is not picklable, so Spark
tasks carry the Store and call :func:`s3_client` where they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Union

import boto3
import botocore.config
import botocore.exceptions

from common.errors import NotFound, StorageError, UsageError  # noqa: F401 - raised here, defined with the other user errors
from common.uris import S3Path, as_folder, is_http, is_s3, join, object_uri, parent, parse_s3  # noqa: F401 - callers' storage.join

# S3 answers 503 SlowDown under load and spot clusters see connection resets: boto3's
# "standard" retry mode retries both with backoff; botocore's max_attempts 10 (10 retries after the
# first request: botocore reports total_max_attempts 11) rides out a minute-long brown-out.  Pool size
# covers the per-task fetch threads.
DEFAULT_ATTEMPTS = 10
_POOL = 32

# A cache of clients (built from the Store alone), not state that decides anything.
_CLIENTS: dict[tuple[int, Optional[str], int], object] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption for every object a step writes (``--sse``, ``--sse-kms-key-id``)."""

    sse: Optional[str] = None  # None, "AES256" or "aws:kms"
    kms_key_id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.sse not in (None, "AES256", "aws:kms"):
            raise UsageError(f"--sse {self.sse!r}: expected AES256 or aws:kms")
        if self.kms_key_id and self.sse != "aws:kms":
            raise UsageError("--sse-kms-key-id needs --sse aws:kms")

    def put_args(self) -> dict[str, str]:
        """The PutObject arguments that ask for it."""
        out = {"ServerSideEncryption": self.sse} if self.sse else {}
        if self.kms_key_id:
            out["SSEKMSKeyId"] = self.kms_key_id
        return out


def _put_args(encryption: Optional[Encryption]) -> dict[str, str]:
    return encryption.put_args() if encryption else {}


@dataclass(frozen=True)
class Store:
    """How a job reaches its objects: endpoint, encryption of its writes, retries; picklable, so it travels in
    the job's task settings (see the module's docstring)."""

    endpoint_url: Optional[str] = None
    encryption: Encryption = Encryption()
    max_attempts: int = DEFAULT_ATTEMPTS  # boto3 "standard" retries: 503 SlowDown, resets, 5xx

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"S3 max_attempts must be at least 1, got {self.max_attempts}")


# What the functions below take as ``endpoint_url``: a Store, an endpoint URL, or None (AWS or AWS_ENDPOINT_URL).
Endpoint = Union[Store, str, None]


def _where(endpoint: Endpoint) -> tuple[Optional[str], int]:
    if isinstance(endpoint, Store):
        return endpoint.endpoint_url, endpoint.max_attempts
    return endpoint, DEFAULT_ATTEMPTS



def s3_client(endpoint_url: Endpoint = None):
    """The boto3 S3 client of this process for a :class:`Store` or an endpoint (None: boto3's own resolution)."""
    url, attempts = _where(endpoint_url)
    key = (os.getpid(), url, attempts)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            config = botocore.config.Config(
                retries={"mode": "standard", "max_attempts": attempts},
                max_pool_connections=_POOL,
                connect_timeout=10,
                read_timeout=60,
            )
            client = boto3.session.Session().client("s3", endpoint_url=url, config=config)
            _CLIENTS[key] = client
        return client


# S3 error codes (the API's names and, for HEAD requests, which carry no body, the HTTP status).
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})
# A conditional create that lost: 412, it exists; 409, a concurrent conditional write to the same key
# is in flight. Either way someone else's object stands.
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` ("" for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@contextlib.contextmanager
def _errors(uri: str, bucket: bool = False, encryption: Optional[Encryption] = None) -> Iterator[None]:
    """Every S3 call runs inside this: any failure leaves as a :class:`StorageError` naming ``uri``
    (``bucket``: the call was about the bucket itself; ``encryption``: what a write asked for)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - translated with the URI
        raise _translate(uri, e, bucket, encryption) from e


def _translate(uri: str, exc: Exception, bucket: bool = False, encryption: Optional[Encryption] = None
               ) -> StorageError:
    """Turn a botocore error into a StorageError that names ``uri`` (never credentials)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _code(exc)
        msg = exc.response.get("Error", {}).get("Message", "") or code
        if code in _NOT_FOUND:
            what = "bucket does not exist" if code == "NoSuchBucket" or bucket else "no such object"
            return NotFound(f"{uri}: {what}")
        if code in _DENIED and bucket:
            return StorageError(f"{uri}: access to bucket {parse_s3(uri).bucket!r} denied (check credentials and policy)")
        if code in _DENIED and exc.operation_name in ("PutObject", "CreateMultipartUpload"):
            hint = ("" if encryption and encryption.sse else "; if the bucket's policy requires server-side encryption, "
                    "pass --sse AES256 or --sse aws:kms")
            return StorageError(f"{uri}: write denied (S3 {code}){hint}")
        return StorageError(f"{uri}: S3 error {code}: {msg}")
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return StorageError(f"{uri}: no usable AWS credentials found (boto3 default chain: environment, "
                            "~/.aws, instance profile)")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
        return StorageError(f"{uri}: cannot reach the S3 endpoint ({exc})")
    return StorageError(f"{uri}: {type(exc).__name__}: {exc}")


def read_bytes(uri: str, endpoint_url: Endpoint = None, if_match: Optional[str] = None) -> bytes:
    """Read a whole object or file.

    Args:
        uri: ``s3://``, ``http(s)://`` or a local path.
        endpoint_url: S3 endpoint override.
        if_match: for S3, an ETag the object must still have.

    Raises:
        NotFound: it does not exist.
        StorageError: any other failure, naming ``uri``.
    """
    if is_s3(uri):
        p = parse_s3(uri)
        kwargs = {"IfMatch": if_match} if if_match else {}
        with _errors(uri):
            return s3_client(endpoint_url).get_object(Bucket=p.bucket, Key=p.key, **kwargs)["Body"].read()
    if is_http(uri):
        return _http_get(uri)[0]
    return _read_local(uri)


def _http_get(uri: str, headers: Optional[dict[str, str]] = None) -> tuple[bytes, int]:
    """``(body, status)`` of an http(s) GET, errors translated with the URI."""
    try:
        with urllib.request.urlopen(urllib.request.Request(uri, headers=headers or {}), timeout=60) as r:
            return r.read(), r.status
    except urllib.error.HTTPError as e:
        cls = NotFound if e.code == 404 else StorageError
        raise cls(f"{uri}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise StorageError(f"{uri}: {e}") from e


def _read_local(uri: str, start: int = 0, length: int = -1) -> bytes:
    """Bytes of a local file from ``start`` (``length`` -1: to the end), errors translated with the path."""
    try:
        with open(uri, "rb") as f:
            f.seek(start)
            return f.read(length)
    except FileNotFoundError as e:
        raise NotFound(f"{uri}: no such file") from e
    except OSError as e:
        raise StorageError(f"{uri}: {e}") from e


def write_bytes(uri: str, data: bytes, endpoint_url: Endpoint = None,
                content_type: str = "application/octet-stream", metadata: Optional[dict[str, str]] = None,
                encryption: Optional[Encryption] = None) -> None:
    """Write a whole object with one PUT (or a local file via a rename, so readers never see half).

    ``metadata`` becomes S3 user metadata (``x-amz-meta-*``); for a local file it goes to a
    hidden sidecar ``.<name>.meta.json``, which Athena, Hive and pyarrow skip.  ``encryption``: the
    step's ``--sse`` (every write of the jobs passes it: tests/unit/common/test_storage.py checks).
    """
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri, encryption=encryption):
            s3_client(endpoint_url).put_object(Bucket=p.bucket, Key=p.key, Body=data, ContentType=content_type,
                                               Metadata=metadata or {}, **_put_args(encryption))
        return
    if is_http(uri):
        raise StorageError(f"{uri}: cannot write to an http(s) URL")
    if metadata is not None:
        _write_local(_sidecar(uri), json.dumps(metadata).encode())
    _write_local(uri, data)


def put_if_absent(uri: str, data: bytes, metadata: dict[str, str], endpoint_url: Endpoint = None,
                  content_type: str = "application/octet-stream", encryption: Optional[Encryption] = None) -> bool:
    """Create an object only if nothing is at ``uri`` yet: S3 ``PUT`` with ``If-None-Match: *``.

    Returns:
        True if this call created it; False if an object was already there (left untouched).
    """
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri, encryption=encryption):
            try:
                s3_client(endpoint_url).put_object(Bucket=p.bucket, Key=p.key, Body=data, ContentType=content_type,
                                                   Metadata=metadata, IfNoneMatch="*", **_put_args(encryption))
                return True
            except botocore.exceptions.ClientError as e:
                if _code(e) in _EXISTS:  # the caller compares digests with the object that stands
                    return False
                raise
    if os.path.exists(uri):
        return False
    _write_local(_sidecar(uri), json.dumps(metadata).encode())
    tmp = _write_tmp(uri, data)
    try:
        os.link(tmp, uri)  # atomic create-if-absent
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_metadata(uri: str, endpoint_url: Endpoint = None) -> Optional[dict[str, str]]:
    """The user metadata of an object (S3 HEAD) or a local file's sidecar; None if the object is absent."""
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri):
            try:
                return dict(s3_client(endpoint_url).head_object(Bucket=p.bucket, Key=p.key).get("Metadata", {}))
            except botocore.exceptions.ClientError as e:
                if _code(e) in _NOT_FOUND:
                    return None
                raise
    if not os.path.exists(uri):
        return None
    try:
        with open(_sidecar(uri), "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return {}


def read_range(uri: str, start: int, end: int, endpoint_url: Endpoint = None) -> bytes:
    """Bytes ``[start, end)`` of an object or file (one ranged S3 GET).

    Raises:
        NotFound: it does not exist.
        StorageError: any other failure, naming ``uri``.
    """
    if end <= start:
        return b""
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri):
            return s3_client(endpoint_url).get_object(Bucket=p.bucket, Key=p.key,
                                                      Range=f"bytes={start}-{end - 1}")["Body"].read()
    if is_http(uri):
        data, status = _http_get(uri, {"Range": f"bytes={start}-{end - 1}"})
        return data if status == 206 else data[start:end]
    return _read_local(uri, start, end - start)


def upload_file(path: str, uri: str, endpoint_url: Endpoint = None,
                content_type: str = "application/octet-stream", encryption: Optional[Encryption] = None) -> None:
    """Publish a local file at ``uri`` as one object (boto3's managed transfer: multipart when large, and
    the object appears only when every part is there)."""
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri, encryption=encryption):
            s3_client(endpoint_url).upload_file(path, p.bucket, p.key,
                                                ExtraArgs={"ContentType": content_type, **_put_args(encryption)})
        return
    if is_http(uri):
        raise StorageError(f"{uri}: cannot write to an http(s) URL")
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    tmp = f"{uri}.tmp-{os.getpid()}"
    import shutil

    shutil.copyfile(path, tmp)
    os.replace(tmp, uri)


def check_buckets(uris: Iterable[str], endpoint_url: Endpoint = None) -> None:
    """:func:`check_bucket` once per distinct S3 bucket among ``uris`` (the first URI names it in errors)."""
    seen: set[str] = set()
    for uri in uris:
        if is_s3(uri) and parse_s3(uri).bucket not in seen:
            seen.add(parse_s3(uri).bucket)
            check_bucket(uri, endpoint_url)


def check_bucket(uri: str, endpoint_url: Endpoint = None) -> None:
    """Fail fast, naming ``uri``, if its bucket is missing, forbidden or the endpoint unreachable (S3 only)."""
    if not is_s3(uri):
        return
    p = parse_s3(uri)
    url, _ = _where(endpoint_url)
    if url:
        # A wrong endpoint would otherwise cost a minute of retries: one plain TCP connect says it in seconds.
        u = urllib.parse.urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            socket.create_connection((u.hostname, port), timeout=5).close()
        except OSError as e:
            raise StorageError(f"{uri}: cannot reach the S3 endpoint {url} ({e})") from e
    with _errors(uri, bucket=True):
        s3_client(endpoint_url).head_bucket(Bucket=p.bucket)


def _sidecar(uri: str) -> str:
    head, name = os.path.split(uri)
    return os.path.join(head, f".{name}.meta.json")


def _write_tmp(uri: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(uri)), f".{os.path.basename(uri)}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
    return tmp


def _write_local(uri: str, data: bytes) -> None:
    os.replace(_write_tmp(uri, data), uri)


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key relative to the bucket (or absolute path), size and ETag."""

    key: str
    size: int
    etag: str

    @classmethod
    def of_s3(cls, obj: dict) -> "ObjectInfo":
        """From one entry of a ListObjectsV2 page's ``Contents``."""
        return cls(obj["Key"], int(obj["Size"]), obj.get("ETag", "").strip('"'))

    @classmethod
    def of_file(cls, path: str, st: os.stat_result) -> "ObjectInfo":
        """A local file: its path, size, and modification time and size as the ETag."""
        return cls(path, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}")


def list_objects(prefix_uri: str, endpoint_url: Endpoint = None, page_size: int = 1000) -> Iterator[ObjectInfo]:
    """List every object under a prefix, paginated (``page_size`` keys per request), in S3's key order.

    For a local directory the keys are absolute paths, walked in sorted order.

    Raises:
        NotFound: the bucket or directory does not exist.
    """
    if is_s3(prefix_uri):
        p = parse_s3(prefix_uri)
        with _errors(prefix_uri):
            pages = s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(
                Bucket=p.bucket, Prefix=p.key, PaginationConfig={"PageSize": page_size})
            for page in pages:
                yield from map(ObjectInfo.of_s3, page.get("Contents", []))
        return
    if not os.path.isdir(prefix_uri):
        raise NotFound(f"{prefix_uri}: no such directory")
    for root, dirs, files in os.walk(prefix_uri):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            yield ObjectInfo.of_file(path, os.stat(path))


def list_page(prefix_uri: str, endpoint_url: Endpoint = None, max_keys: int = 1000) -> tuple[list[ObjectInfo], bool]:
    """The first page of a listing (one request) and whether there is more; a local directory is one page."""
    if is_s3(prefix_uri):
        p = parse_s3(prefix_uri)
        with _errors(prefix_uri):
            page = s3_client(endpoint_url).list_objects_v2(Bucket=p.bucket, Prefix=p.key, MaxKeys=max_keys)
        return [ObjectInfo.of_s3(o) for o in page.get("Contents", [])], bool(page.get("IsTruncated"))
    return list(list_objects(prefix_uri, endpoint_url)), False


def peek_level(prefix_uri: str, endpoint_url: Endpoint = None) -> tuple[int, list[str], bool]:
    """The first page (one request) of :func:`list_level`: ``(objects on it, sub-prefix URIs on it, more pages?)``."""
    if is_s3(prefix_uri):
        p = parse_s3(prefix_uri)
        with _errors(prefix_uri):
            page = s3_client(endpoint_url).list_objects_v2(Bucket=p.bucket, Prefix=p.key, Delimiter="/", MaxKeys=1000)
        return (len(page.get("Contents", [])), [f"s3://{p.bucket}/{c['Prefix']}" for c in page.get("CommonPrefixes", [])],
                bool(page.get("IsTruncated")))
    objects, folders = list_level(prefix_uri, endpoint_url)
    return len(objects), folders, False


def list_level(prefix_uri: str, endpoint_url: Endpoint = None) -> tuple[list[ObjectInfo], list[str]]:
    """One level under a prefix: the objects directly in it, and the URIs of its sub-prefixes ("folders").

    S3: ``ListObjectsV2`` with ``Delimiter="/"`` (one request per 1,000 entries); a local
    directory: its files and subdirectories.  ``prefix_uri`` should end with ``/``.

    Raises:
        NotFound: the bucket or directory does not exist.
    """
    if is_s3(prefix_uri):
        p = parse_s3(prefix_uri)
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        with _errors(prefix_uri):
            pages = s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(
                Bucket=p.bucket, Prefix=p.key, Delimiter="/")
            for page in pages:
                objects += map(ObjectInfo.of_s3, page.get("Contents", []))
                folders += [f"s3://{p.bucket}/{c['Prefix']}" for c in page.get("CommonPrefixes", [])]
        return objects, folders
    if not os.path.isdir(prefix_uri):
        raise NotFound(f"{prefix_uri}: no such directory")
    objects, folders = [], []
    for entry in sorted(os.scandir(prefix_uri), key=lambda e: e.name):
        if entry.is_dir():
            folders.append(os.path.join(entry.path, ""))
        elif entry.is_file():
            objects.append(ObjectInfo.of_file(entry.path, entry.stat()))
    return objects, folders


def exists(uri: str, endpoint_url: Endpoint = None) -> bool:
    """True if the object or file exists (one S3 HEAD)."""
    return read_metadata(uri, endpoint_url) is not None


def delete_objects(uris: Sequence[str], endpoint_url: Endpoint = None) -> int:
    """Delete many objects or files (absent ones are fine): on S3 one DeleteObjects request per 1,000 keys of a
    bucket.  Returns how many were asked for.

    Raises:
        StorageError: a request failed, or S3 refused some keys (the first is named).
    """
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        if is_s3(uri):
            p = parse_s3(uri)
            by_bucket.setdefault(p.bucket, []).append(p.key)
        else:
            delete(uri)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            with _errors(f"s3://{bucket}/{chunk[0]}"):
                reply = s3_client(endpoint_url).delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            if reply.get("Errors"):
                e = reply["Errors"][0]
                raise StorageError(f"s3://{bucket}/{e.get('Key')}: not deleted: {e.get('Code')}: {e.get('Message')} "
                                   f"({len(reply['Errors'])} keys refused)")
    return len(uris)


def delete(uri: str, endpoint_url: Endpoint = None) -> None:
    """Delete one object or file (absent is fine)."""
    if is_s3(uri):
        p = parse_s3(uri)
        with _errors(uri):
            s3_client(endpoint_url).delete_object(Bucket=p.bucket, Key=p.key)
        return
    for path in (uri, _sidecar(uri)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
