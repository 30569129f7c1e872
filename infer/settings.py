"""infer's command line and its settings: the parser (every flag and default), and :class:`InferConfig`, the
one typed object the job is run from, checked once (infer/main.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from common.cli import UsageError, add_common_arguments
from common.images import (
    CHANNEL_ORDERS,
    DECODES,
    DEFAULT_DECODE,
    INPUT_SIZE,
    RESIZE_MODES,
    Preprocessing,
    parse_size,
    parse_triple,
)
from common.output import check_run_id
from common.settings import from_flags, store_from
from common.storage import Store

PROG = "infer"
# --precision and its checks (infer/precision.py converts and measures; the defaults live here, with the parser)
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_MIN_AGREEMENT = 0.99


def build_parser() -> argparse.ArgumentParser:
    """The command line (docs/reference.md)."""
    p = argparse.ArgumentParser(prog=PROG, description="Run an MXNet image model over the shards of a manifest and "
                                "write one Parquet file of predictions per shard.")
    p.add_argument("--manifest", required=True, help="URI of manifest.parquet written by prepare")
    p.add_argument("--sym-url", required=True, help="model symbol, e.g. .../resnet-18-symbol.json (s3://, http(s)://, path)")
    p.add_argument("--param-url", required=True, help="model params, e.g. .../resnet-18-0000.params")
    p.add_argument("--label-url", default=None, help="class names, synset.txt format (one 'nXXXXXXXX name' or one "
                   "name per line); required unless --top-k 0")
    p.add_argument("--output", required=True, help="table location, e.g. s3://BUCKET/predictions/ "
                   "(files go to run_id=<id>/, run records to _runs/<id>/)")
    p.add_argument("--run-id", default=None, help="partition value for this run (default: derived from the "
                   "manifest id, the model and a non-fp32 precision, so a rerun fills in the same run)")
    p.add_argument("--top-k", type=int, default=5, help="classes kept per image, best first (default 5); 0 with "
                   "--output-layer: embeddings only (no labels, no softmax, top_k columns null)")
    p.add_argument("--image-size", default=str(INPUT_SIZE), help=f"model input S x S, or H x W as HxW, e.g. 48x192 "
                   f"(default {INPUT_SIZE}; import_onnx prints the size it read)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="stretch", help="stretch (default): resize to S x S; "
                   "shorter-side-crop: shorter side to round(S*256/224), then the centre S x S crop (HxW: the image "
                   "covers round(H*256/224) x round(W*256/224), then the centre H x W crop)")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="rgb", help="the order the model takes its "
                   "colour channels in: rgb (default; PyTorch, timm, Keras) or bgr (Caffe-, OpenCV- and many "
                   "Paddle-trained models); --mean and --std are given in this order")
    p.add_argument("--mean", default="0,0,0", help="per-channel mean, in --channel-order, subtracted from 0..255 "
                   "pixels (default 0,0,0; a Gluon model zoo export wants 123.675,116.28,103.53)")
    p.add_argument("--std", default="1,1,1", help="per-channel divisor, in --channel-order, after the mean (default "
                   "1,1,1; Gluon: 58.395,57.12,57.375)")
    p.add_argument("--decode", choices=DECODES, default=DEFAULT_DECODE, help="fast (default): decode a large JPEG at "
                   "the smallest DCT scale (1/2-1/8) that still covers the resize, and box-reduce other large images "
                   "before it (docs/reference.md: measured agreement); exact: decode every pixel")
    p.add_argument("--output-layer", default=None, help="also write this internal output's values per image (e.g. "
                   "flatten0_output) in the embedding column; a wrong name lists the outputs there are")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--shards", default=None, help="only these manifest shard ids, e.g. 3,17,40-45")
    sel.add_argument("--only-missing", action="store_true", help="only shards whose Parquet file is absent from the run")
    sel.add_argument("--only-failed", action="store_true", help="only shards whose last recorded status is failed")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the model runs (default cpu); gpu: each "
                   "task binds the GPU Spark's GPU scheduling assigned it (spark.executor.resource.gpu.amount, "
                   "spark.task.resource.gpu.amount; deploy/emr/configurations-gpu.json), fp32 only")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); bf16 (MXNet AMP) or int8 (oneDNN quantization, calibrated): converted once "
                   "on the driver, checked against fp32, stored under _runs/<run_id>/model/ for the executors")
    p.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help="images drawn from across the manifest to calibrate int8; as many again, disjoint, measure "
                   f"top-1 agreement with fp32 (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="refuse a bf16/int8 model whose top-1 agrees with fp32 on fewer of the agreement images "
                   f"(default {DEFAULT_MIN_AGREEMENT})")
    p.add_argument("--shards-per-task", type=int, default=None,
                   help="consecutive shards per Spark task, run as a pipeline (default 4 at fp32, 6 at bf16, 12 at "
                   "int8: a few seconds of model time; fewer when there are too few shards to keep every core busy)")
    p.add_argument("--dry-run", action="store_true", help="check the manifest and model, select and group the "
                   "shards, print the plan; write nothing and start no task")
    p.add_argument("--glue-database", default=None, help="with --glue-table: keep the table in the Glue Data "
                   "Catalog (Athena's): created with the database when absent, and this run's partition registered "
                   "once every shard of the manifest is done")
    p.add_argument("--glue-table", default=None, help="the Glue table over --output (see --glue-database)")
    p.add_argument("--iceberg-table", default=None, metavar="DB.TABLE", help="commit the run to this Apache Iceberg table in "
                   "the Glue catalog instead (created when absent at <output>/DB.db/TABLE, partitioned by run_id): one "
                   "snapshot per invocation, every shard's rows in it exactly once (docs/iceberg.md)")
    p.add_argument("--force", action="store_true", help="overwrite part files that exist from different input "
                   "(another model or --top-k under the same --run-id); without it such a shard is a reported conflict")
    add_common_arguments(p)
    return p


@dataclass(frozen=True)
class InferConfig:
    """Every flag of infer, checked (:meth:`from_args`), and what follows from them: the preprocessing, the
    Store and the run's variant."""

    manifest: str
    sym_url: str
    param_url: str
    label_url: Optional[str]
    output: str
    run_id: Optional[str]
    top_k: int
    image_size: str
    resize: str
    channel_order: str
    mean: str
    std: str
    decode: str
    output_layer: Optional[str]
    shards: Optional[str]
    only_missing: bool
    only_failed: bool
    device: str
    precision: str
    calibration_images: int
    min_agreement: float
    shards_per_task: Optional[int]
    dry_run: bool
    glue_database: Optional[str]
    glue_table: Optional[str]
    iceberg_table: Optional[str]
    force: bool
    sse: Optional[str]
    sse_kms_key_id: Optional[str]
    s3_endpoint_url: Optional[str]
    verbose: bool
    # derived from the flags
    prep: Preprocessing
    store: Store  # endpoint, --sse, retries: every object the run writes, every task's I/O
    variant: str  # see run_variant

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "InferConfig":
        """The settings of parsed flags.

        Raises:
            UsageError: the offending flag and value.
        """
        prep = Preprocessing(parse_size(args.image_size), args.resize, parse_triple(args.mean, "--mean"),
                             parse_triple(args.std, "--std"), args.decode, args.channel_order)
        config = from_flags(cls, args, prep=prep, store=store_from(args), variant=run_variant(prep, args.output_layer))
        config.check()
        return config

    def check(self) -> None:
        """Argument checks that need no input.

        Raises:
            UsageError: the offending flag and value.
        """
        if self.top_k < 0:
            raise UsageError(f"--top-k must be at least 0, got {self.top_k}")
        if self.top_k == 0 and not self.output_layer:
            raise UsageError("--top-k 0 (no classes) needs --output-layer: there would be nothing to write")
        if self.top_k > 0 and not self.label_url:
            raise UsageError("--label-url is required (or --top-k 0 with --output-layer for embeddings only)")
        if self.output_layer and self.precision != "fp32":
            raise UsageError(f"--output-layer with --precision {self.precision}: converted models' internal outputs are "
                             "not float (int8 layers are quantized); run embeddings at fp32")
        if self.calibration_images < 1:
            raise UsageError(f"--calibration-images must be at least 1, got {self.calibration_images}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must lie in 0..1, got {self.min_agreement}")
        if self.shards_per_task is not None and self.shards_per_task < 1:
            raise UsageError(f"--shards-per-task must be at least 1, got {self.shards_per_task}")
        if self.run_id:
            check_run_id(self.run_id)
        if bool(self.glue_database) != bool(self.glue_table):
            raise UsageError("--glue-database and --glue-table go together")
        if self.iceberg_table:
            from common.iceberg import parse_table_name

            parse_table_name(self.iceberg_table)
            if self.glue_table:
                raise UsageError("--iceberg-table or --glue-database/--glue-table: the run goes to one table")
            if self.force:
                raise UsageError("--force with --iceberg-table: an Iceberg table's files are never overwritten; "
                                 "write the new output under another --run-id")
        if self.device == "gpu" and self.precision != "fp32":
            raise UsageError(f"--precision {self.precision} with --device gpu: bf16 and int8 are converted for the CPU "
                             "(oneDNN); run fp32 on a GPU")


def run_variant(prep: Preprocessing, output_layer: Optional[str]) -> str:
    """What besides model, precision and --top-k shapes the output ("" for the zoo defaults with --decode exact,
    the contract of the runs made before --decode): it goes into the default run id and every part file's input
    digest."""
    parts = [] if prep.is_default else [prep.describe()]
    if prep.decode != "exact":
        parts.append(f"decode={prep.decode}")
    if output_layer:
        parts.append(f"layer={output_layer}")
    return ";".join(parts)
