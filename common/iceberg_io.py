"""pyiceberg's file IO over common.storage: the table's metadata, manifest lists and manifests are read and
written with the job's own S3 client (its endpoint, retries and ``--sse``), each file serialised in memory
and written with one PUT, like every other object the jobs write.

pyiceberg loads it by name from the catalog's ``py-io-impl`` property (infer/iceberg_table.py sets it), with
the properties :func:`properties` makes from a :class:`common.storage.Store`.
"""

from __future__ import annotations

import io
from typing import Optional, Union

from pyiceberg.io import FileIO, InputFile, InputStream, OutputFile, OutputStream

from common import storage

IO_IMPL = "common.iceberg_io.StoreFileIO"
_ENDPOINT = "s3.endpoint"
_SSE = "shardinfer.sse"
_SSE_KMS_KEY_ID = "shardinfer.sse-kms-key-id"


def properties(store: storage.Store) -> dict[str, str]:
    """The catalog properties that make pyiceberg use this IO with ``store``."""
    props = {"py-io-impl": IO_IMPL}
    if store.endpoint_url:
        props[_ENDPOINT] = store.endpoint_url
    if store.encryption.sse:
        props[_SSE] = store.encryption.sse
    if store.encryption.kms_key_id:
        props[_SSE_KMS_KEY_ID] = store.encryption.kms_key_id
    return props


class _Input(InputFile):
    def __init__(self, location: str, store: storage.Store) -> None:
        super().__init__(location)
        self._store = store
        self._data: Optional[bytes] = None

    def _read(self) -> bytes:
        if self._data is None:  # an absent file raises storage.NotFound, a FileNotFoundError, as pyiceberg expects
            self._data = storage.read_bytes(self.location, self._store)
        return self._data

    def __len__(self) -> int:
        return len(self._read())

    def exists(self) -> bool:
        return storage.exists(self.location, self._store)

    def open(self, seekable: bool = True) -> InputStream:
        return io.BytesIO(self._read())  # type: ignore[return-value]


class _Upload(io.BytesIO):
    """The bytes written, uploaded with one PUT on close."""

    def __init__(self, target: "_Output", overwrite: bool) -> None:
        super().__init__()
        self._target, self._overwrite = target, overwrite

    def close(self) -> None:
        if not self.closed:
            self._target._upload(self.getvalue(), self._overwrite)
        super().close()

    def __enter__(self) -> "_Upload":
        return self


class _Output(OutputFile):
    def __init__(self, location: str, store: storage.Store) -> None:
        super().__init__(location)
        self._store = store
        self._size: Optional[int] = None

    def _upload(self, data: bytes, overwrite: bool) -> None:
        enc = self._store.encryption
        if overwrite:
            storage.write_bytes(self.location, data, self._store, encryption=enc)
        elif not storage.put_if_absent(self.location, data, {}, self._store, encryption=enc):
            raise FileExistsError(f"{self.location} already exists")
        self._size = len(data)

    def __len__(self) -> int:
        if self._size is None:
            return len(self.to_input_file())
        return self._size

    def exists(self) -> bool:
        return storage.exists(self.location, self._store)

    def to_input_file(self) -> InputFile:
        return _Input(self.location, self._store)

    def create(self, overwrite: bool = False) -> OutputStream:
        if not overwrite and self.exists():
            raise FileExistsError(f"{self.location} already exists")
        return _Upload(self, overwrite)  # type: ignore[return-value]


class StoreFileIO(FileIO):
    """pyiceberg's ``FileIO`` on common.storage (``s3://`` and local paths)."""

    def __init__(self, properties: dict = {}) -> None:  # noqa: B006 - pyiceberg's own signature
        super().__init__(properties)
        self.store = storage.Store(properties.get(_ENDPOINT) or None,
                                   storage.Encryption(properties.get(_SSE) or None, properties.get(_SSE_KMS_KEY_ID) or None))

    def new_input(self, location: str) -> InputFile:
        """A file to read (whole, with one GET, when first used)."""
        return _Input(location, self.store)

    def new_output(self, location: str) -> OutputFile:
        """A file to write (in memory, then one PUT on close)."""
        return _Output(location, self.store)

    def delete(self, location: Union[str, InputFile, OutputFile]) -> None:
        """Delete a file (absent is fine)."""
        storage.delete(location if isinstance(location, str) else location.location, self.store)
