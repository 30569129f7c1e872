"""common/settings.py: a job's settings object takes every flag, its Store, and its flags' table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import pytest

from common.cli import add_common_arguments
from common.settings import flag_table, from_flags, store_from
from common.storage import Encryption, Store


@dataclass(frozen=True)
class _Config:
    size: int
    sse: Optional[str]
    sse_kms_key_id: Optional[str]
    s3_endpoint_url: Optional[str]
    verbose: bool
    store: Store


def _parser(extra: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unit")
    p.add_argument("--size", type=int, default=3, help="how many | which")
    if extra:
        p.add_argument("--forgotten", action="store_true")
    add_common_arguments(p)
    return p


def test_every_flag_lands_in_its_field_and_a_flag_without_one_is_refused(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    args = _parser().parse_args(["--size", "5", "--sse", "aws:kms", "--sse-kms-key-id", "k",
                                 "--s3-endpoint-url", "http://127.0.0.1:1"])
    config = from_flags(_Config, args, store=store_from(args))
    assert config == _Config(5, "aws:kms", "k", "http://127.0.0.1:1", False,
                             Store("http://127.0.0.1:1", Encryption("aws:kms", "k")))
    with pytest.raises(TypeError, match=r"_Config has no field for the flags \['forgotten'\]"):
        from_flags(_Config, _parser(extra=True).parse_args([]), store=Store())
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert store_from(_parser().parse_args([])) == Store("http://127.0.0.1:2")


def test_the_flag_table_is_the_parsers():
    rows = flag_table(_parser())
    assert rows[1] == ("--size SIZE", "3", "how many | which")
    assert ("--sse AES256|aws:kms", "", rows[2][2]) == rows[2]
    assert [r[0] for r in rows] == ["--help", "--size SIZE", "--sse AES256|aws:kms", "--sse-kms-key-id SSE_KMS_KEY_ID",
                                    "--s3-endpoint-url S3_ENDPOINT_URL", "--verbose"]
