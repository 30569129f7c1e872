"""common/cli.py: the exit-code contract of every command, on a body that writes to the local S3 server."""

from __future__ import annotations

import argparse
import re

import pytest

from common import storage
from common.cli import BAD_INPUT, DONE, NOT_DONE, UsageError, add_common_arguments, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unit")
    p.add_argument("--fail", choices=("before", "after", "bug", "settings"), default=None)
    add_common_arguments(p)
    return p


def _body(uri: str):
    def body(args, writes) -> int:
        if args.fail == "before":
            raise UsageError("--fail before: refused")
        writes.begin(f"the object {uri}", "run the same command again")
        storage.write_bytes(uri, b"x", encryption=None)
        if args.fail == "after":
            raise storage.StorageError("the second write failed")
        if args.fail == "bug":
            raise KeyError("no such thing")
        return DONE
    return body


def _settings(args):
    if args.fail == "settings":
        raise UsageError("--fail settings: refused while building the settings")
    return args


@pytest.mark.parametrize("fail, code, written", [
    (None, DONE, True), ("before", BAD_INPUT, False), ("settings", BAD_INPUT, False), ("after", NOT_DONE, True),
    ("bug", NOT_DONE, True),
])
def test_the_exit_code_says_whether_anything_was_written(s3, capsys, fail, code, written):
    s3.create_bucket("unit-cli")
    uri = f"s3://unit-cli/{fail}"
    argv = ["--fail", fail] if fail else []
    assert run_cli("unit", _body(uri), _parser(), argv, settings=_settings) == code
    assert storage.exists(uri) is written  # 2 only when nothing is there
    err = capsys.readouterr().err
    if code == NOT_DONE:
        assert f"written before the failure: the object {uri}; to finish: run the same command again" in err
    if fail == "bug":  # never exit 2 for a bug; the traceback kept in a file the line names
        path = re.search(r"traceback in (\S+\.traceback\.txt)", err).group(1)
        assert "KeyError: 'no such thing'" in open(path).read()
