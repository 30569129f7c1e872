"""prepare/settings.py: the one settings object prepare runs from, and what its tasks get."""

from __future__ import annotations

import re

import pytest

from common.cli import UsageError
from common.storage import Encryption, Store
from prepare.settings import PrepareConfig, build_parser


def _config(*extra: str) -> PrepareConfig:
    return PrepareConfig.from_args(build_parser().parse_args(["--input", "s3://b/in", "--output", "s3://b/out",
                                                              *extra]))


@pytest.mark.parametrize("extra, says", [
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--max-skipped-fraction", "2"], "--max-skipped-fraction must be between 0 and 1, got 2"),
    (["--max-side", "3"], "--max-side must be at least"),
    (["--shards-per-part", "0"], "--shards-per-part must be at least 1, got 0"),
    (["--formats", "png,heic"], "heic"),
    (["--sse-kms-key-id", "k"], "--sse-kms-key-id needs --sse aws:kms"),
])
def test_each_bad_flag_is_refused_by_name(extra, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        _config(*extra)


def test_the_tasks_settings_follow_from_the_flags(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    c = _config("--formats", "jpeg,png", "--max-side", "256", "--sse", "AES256", "--batch", "8",
                "--exclude-manifest", "s3://b/old/manifest.parquet", "--exclude-manifest", "s3://b/older/m.parquet")
    t = c.task_settings()
    assert (t.input_uri, t.output_uri, t.batch_size, t.max_side) == ("s3://b/in/", "s3://b/out/", 8, 256)
    assert set(t.formats) == {"jpeg", "png"} and t.store == Store(None, Encryption("AES256"))
    assert c.exclude_manifest == ["s3://b/old/manifest.parquet", "s3://b/older/m.parquet"]
