"""One typed settings object per job: a frozen dataclass built from the parsed command line, checked once.

A job's parser keeps every default (its ``--help`` says them, and the rerun command and docs/reference.md's
flag tables are read from it); its settings class has one field per flag, named as argparse names the flag's
value, and fields of its own for what the job derives from the flags (the preprocessing, the :class:`Store`).
:func:`from_flags` refuses a parsed flag without a field, so a new flag cannot be forgotten on the way in.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from common.cli import endpoint_from
from common.storage import Encryption, Store

T = TypeVar("T")


def from_flags(cls: type[T], args: argparse.Namespace, **derived: Any) -> T:
    """``cls`` (a frozen dataclass) from every parsed flag of ``args`` and the ``derived`` fields.

    Raises:
        TypeError: a flag without a field, or a field that is neither a flag nor derived (a bug, not input).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    flags = vars(args)
    if set(flags) - names:
        raise TypeError(f"{cls.__name__} has no field for the flags {sorted(set(flags) - names)}")
    return cls(**flags, **derived)


def store_from(args: argparse.Namespace) -> Store:
    """The job's :class:`Store`: ``--s3-endpoint-url`` (else ``AWS_ENDPOINT_URL``), ``--sse``/``--sse-kms-key-id``
    where the command has them, the default retries.

    Raises:
        UsageError: ``--sse-kms-key-id`` without ``--sse aws:kms``.
    """
    return Store(endpoint_from(args), Encryption(getattr(args, "sse", None), getattr(args, "sse_kms_key_id", None)))


def flag_table(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """``(flag, default, help)`` of every option ``parser`` shows, in its order: the flag tables of
    docs/reference.md are made from it (scripts/flag_docs.py)."""
    rows = []
    for action in parser._actions:  # argparse's own list of the parser's options
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flag = action.option_strings[-1]
        if action.choices:
            flag += " " + "|".join(map(str, action.choices))
        elif action.nargs != 0:
            flag += " " + str(action.metavar or action.dest.upper())
        if action.required:
            default = "required"
        elif action.nargs == 0 or action.default in (None, [], False):
            default = ""
        else:
            default = str(action.default)
        rows.append((flag, default, " ".join((action.help or "").split())))
    return rows
