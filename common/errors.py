"""The errors a user can act on, in one place: each job prints them as one line naming the input
(``prog: error: …``) instead of a traceback, with exit code 2 when nothing was written yet and 1
after (``common.cli``).  Any other exception is a bug, reported as an internal error.

They live here, not beside the code that raises them, so that a command line can catch them all
without importing MXNet, Spark or pyarrow (``common.cli`` imports only this module).  They derive
from the built-in class a caller would expect (``ValueError`` for bad values), but a plain
``ValueError`` is never taken for a user's mistake.
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
    """A bad argument or combination of arguments (the message names the flag and value)."""


class GlueError(StorageError):
    """A Glue Data Catalog problem the user must resolve (the message names database, table and difference)."""


class AgreementError(ValueError):
    """A bf16/int8 model whose top-1 agreement with fp32 is below --min-agreement."""


# Printed as one line naming the input, no traceback.
USER_ERRORS = (StorageError, ManifestError, ModelError, ShardFormatError, BadImageError, UsageError, AgreementError)
