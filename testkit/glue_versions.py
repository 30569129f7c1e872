"""moto's Glue as AWS Glue behaves on ``UpdateTable``: a ``VersionId`` that is not the table's current version is
refused with ``ConcurrentModificationException``.

moto 5.2.5 ignores ``VersionId``, so two writers that read the same table version can both "succeed" and one
update is lost; AWS Glue refuses the stale one, which is how Iceberg's Glue catalog (pyiceberg, Trino, Athena)
detects a concurrent commit and retries.  :func:`enforce` patches the running moto (in this process: the local
server of the tests and the demo is a thread of it), once; the check and the update are one step under a lock.
:func:`on_update` lets a test act around each ``UpdateTable`` (hold it, refuse it, or see it land): how the
tests stop a driver between writing and committing, or right after committing, at a known point.
Tooling for tests only; the jobs never import it.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_PATCHED = [False]
# test hooks: before(database, table) runs before the update (it may block, or raise to refuse it),
# after(database, table) once it has landed
_HOOKS: dict = {"before": None, "after": None}
# how many updates were refused for a stale VersionId (tests read it)
REFUSED = [0]


def on_update(before=None, after=None) -> None:
    """Set (or, with no arguments, clear) the hooks around moto's ``UpdateTable``."""
    _HOOKS.update(before=before, after=after)


def refusal(message: str) -> Exception:
    """An error a ``before`` hook raises to refuse an update (the client sees a Glue InternalServiceException)."""
    from moto.core.exceptions import JsonRESTError

    return JsonRESTError("InternalServiceException", message)


def enforce() -> None:
    """Make moto's Glue ``UpdateTable`` refuse a stale ``VersionId`` (idempotent)."""
    if _PATCHED[0]:
        return
    from moto.core.exceptions import JsonRESTError
    from moto.glue.responses import GlueResponse

    class ConcurrentModificationException(JsonRESTError):
        code = 400

        def __init__(self, message: str) -> None:
            super().__init__("ConcurrentModificationException", message)

    plain = GlueResponse.update_table

    def update_table(self):
        version = self.parameters.get("VersionId")
        database, name = self.parameters.get("DatabaseName"), self.parameters.get("TableInput", {}).get("Name")
        if _HOOKS["before"] is not None:
            _HOOKS["before"](database, name)
        with _LOCK:
            if version is not None:
                current = str(self.glue_backend.get_table(database, name)._current_version)
                if str(version) != current:
                    REFUSED[0] += 1
                    raise ConcurrentModificationException(
                        f"Update table failed due to concurrent modifications: VersionId {version} is not the "
                        f"table's current version {current}")
            result = plain(self)
        if _HOOKS["after"] is not None:
            _HOOKS["after"](database, name)
        return result

    GlueResponse.update_table = update_table
    _PATCHED[0] = True
