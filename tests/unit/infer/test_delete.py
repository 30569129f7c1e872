"""infer/delete.py's settings: each refusal by name, before anything is listed or deleted."""

from __future__ import annotations

import re

import pytest

from common.cli import UsageError
from common.storage import Store
from infer.delete import DeleteConfig, build_parser


@pytest.mark.parametrize("argv, says", [
    (["--run-id", "r"], "--output (infer's --output) and --run-id are both required"),
    (["--output", "s3://b/p/", "--run-id", "../x"], "run id '../x' is not allowed"),
    (["--output", "s3://b/p/", "--run-id", "r", "--glue-database", "d"], "--glue-database and --glue-table go together"),
])
def test_each_bad_flag_is_refused_by_name(argv, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        DeleteConfig.from_args(build_parser().parse_args(argv))


def test_the_settings_of_a_delete(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7")
    c = DeleteConfig.from_args(build_parser().parse_args(["--output", "s3://b/p/", "--run-id", "r", "--yes"]))
    assert (c.output, c.run_id, c.yes, c.store) == ("s3://b/p/", "r", True, Store("http://127.0.0.1:7"))
