"""infer/settings.py: the one settings object infer runs from — every flag checked once, what follows from them,
the rerun command and docs/reference.md's flag tables made from the same parser."""

from __future__ import annotations

import dataclasses
import re
import shlex

import pytest

from common.cli import UsageError
from common.storage import Encryption, Store
from infer.settings import InferConfig, build_parser

BASE = ["--manifest", "s3://b/m.parquet", "--sym-url", "s", "--param-url", "p", "--label-url", "l",
        "--output", "s3://b/out/"]


def _config(*extra: str) -> InferConfig:
    return InferConfig.from_args(build_parser().parse_args([*BASE, *extra]))


@pytest.mark.parametrize("extra, says", [
    (["--top-k", "-1"], "--top-k must be at least 0, got -1"),
    (["--top-k", "0"], "--top-k 0 (no classes) needs --output-layer"),
    (["--precision", "int8", "--output-layer", "x"], "--output-layer with --precision int8"),
    (["--calibration-images", "0"], "--calibration-images must be at least 1"),
    (["--min-agreement", "1.5"], "--min-agreement must lie in 0..1"),
    (["--shards-per-task", "0"], "--shards-per-task must be at least 1"),
    (["--run-id", "a/b"], "run id 'a/b' is not allowed"),
    (["--glue-table", "t"], "--glue-database and --glue-table go together"),
    (["--device", "gpu", "--precision", "bf16"], "--precision bf16 with --device gpu"),
    (["--mean", "1,2"], "--mean"),
    (["--image-size", "0"], "--image-size"),
    (["--sse-kms-key-id", "k"], "--sse-kms-key-id needs --sse aws:kms"),
])
def test_each_bad_flag_is_refused_by_name(extra, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        _config(*extra)


def test_what_follows_from_the_flags(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    c = _config("--sse", "aws:kms", "--sse-kms-key-id", "alias/k", "--s3-endpoint-url", "http://127.0.0.1:9",
                "--image-size", "48x192", "--decode", "exact")
    assert c.store == Store("http://127.0.0.1:9", Encryption("aws:kms", "alias/k"))
    assert c.prep.size == (48, 192) and c.prep.decode == "exact" and c.variant == c.prep.describe()
    assert _config("--decode", "exact").variant == ""  # the zoo defaults with exact decoding: runs from before
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.top_k = 3  # type: ignore[misc]


def test_the_reference_pages_flag_tables_are_the_parsers():
    """docs/reference.md's tables are generated from the four parsers (scripts/flag_docs.py), and say each
    infer default as --help does."""
    from scripts.docblocks import render
    from scripts.flag_docs import DOC, blocks

    text = open(DOC).read()
    assert render(text, blocks(), "scripts/flag_docs.py", DOC) == text
    assert "| `--top-k TOP_K` | `5` |" in text and r"| `--precision fp32\|bf16\|int8` | `fp32` |" in text


def test_size_and_channel_order_are_in_the_rerun_command_the_run_id_and_the_part_digest():
    """--image-size HxW and --channel-order bgr change what the model sees: the printed rerun command passes them
    on, and the run variant (default run id, every part file's input digest) differs from the defaults'."""
    from infer.runrecord import rerun_command

    config = _config

    sized = config("--image-size", "48x192", "--channel-order", "bgr")
    cmd = shlex.split(rerun_command(sized, "r1"))
    assert cmd[cmd.index("--image-size") + 1] == "48x192" and cmd[cmd.index("--channel-order") + 1] == "bgr"
    plain = config()
    assert "--channel-order" not in rerun_command(plain, "r1") and "--image-size" not in rerun_command(plain, "r1")
    variants = {c.variant for c in (plain, sized, config("--image-size", "48x192"), config("--channel-order", "bgr"))}
    assert len(variants) == 4, variants
    assert sized.prep.record()["image_size"] == "48x192"


def test_every_flag_that_shapes_the_output_round_trips_through_the_rerun_command():
    """The rerun command is derived from infer's parser and settings: parsed back, it gives the run's settings
    (only the selection becomes --only-failed), whatever flag a later change adds."""
    from infer.runrecord import rerun_command

    parser = build_parser()
    given = ["--manifest", "s3://b/m.parquet", "--sym-url", "s3://b/s.json", "--param-url", "s3://b/p.params",
             "--label-url", "s3://b/l.txt", "--output", "s3://b/out/", "--run-id", "r1", "--top-k", "3",
             "--image-size", "48x192", "--resize", "shorter-side-crop", "--channel-order", "bgr",
             "--mean", "1,2,3", "--std", "4,5,6", "--decode", "exact", "--shards-per-task", "7",
             "--precision", "int8", "--calibration-images", "96", "--min-agreement", "0.95",
             "--glue-database", "db", "--glue-table", "t", "--force", "--sse", "aws:kms", "--sse-kms-key-id",
             "alias/k", "--s3-endpoint-url", "http://127.0.0.1:9000", "--shards", "3,5-6"]
    args = InferConfig.from_args(parser.parse_args(given))
    argv = shlex.split(rerun_command(args, "r1"))
    back = InferConfig.from_args(parser.parse_args(argv[argv.index("infer/main.py") + 1:]))
    assert back == dataclasses.replace(args, shards=None, only_failed=True)
    assert back.store == args.store and back.prep == args.prep and back.variant == args.variant
    # the flags that cannot go with int8 (or --glue-table, --force), in a second run
    embeddings = InferConfig.from_args(parser.parse_args(
        given[:10] + ["--output-layer", "flatten0_output", "--device", "gpu", "--top-k", "0",
                      "--iceberg-table", "db.t"]))
    argv2 = shlex.split(rerun_command(embeddings, "r2"))
    assert InferConfig.from_args(parser.parse_args(argv2[4:])) == dataclasses.replace(embeddings, run_id="r2",
                                                                                        only_failed=True)
    # every option of the parser is either passed on or one of the few the rerun sets or drops on purpose
    from infer.runrecord import _NOT_PASSED_ON

    options = {a.option_strings[-1] for a in parser._actions if a.option_strings}
    passed = {a for a in argv + argv2 if a.startswith("--")} - {"--properties-file"}
    assert options - passed <= _NOT_PASSED_ON, options - passed
    plain = InferConfig.from_args(parser.parse_args(given[:10]))
    assert shlex.split(rerun_command(plain, "r1"))[4:] == given[:10] + ["--run-id", "r1", "--only-failed"]
