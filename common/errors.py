"""The errors a user can act on, in one place: each job prints them as one line naming the input
(``prog: error: …``, exit 2) instead of a traceback.

They live here, not beside the code that raises them, so that a command line can catch them all
without importing MXNet, Spark or pyarrow (``common.cli`` imports only this module).
"""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and what S3 (or the OS) said."""


class NotFound(StorageError, FileNotFoundError):
    """The object, bucket or file does not exist."""


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names it."""


class ModelError(ValueError):
    """A model whose files are missing, unreadable or inconsistent; the message names the file."""


class ShardFormatError(ValueError):
    """Bytes that do not follow the shard layout; the message names the shard and byte offset."""


class BadImageError(ValueError):
    """An image that cannot be used; the message names its key and why."""


class UsageError(ValueError):
    """A bad combination of arguments, found before Spark starts."""


# Printed as one line naming the input, no traceback (ValueError: argparse-style bad values).
USER_ERRORS = (StorageError, ManifestError, ModelError, ShardFormatError, BadImageError, ValueError)
