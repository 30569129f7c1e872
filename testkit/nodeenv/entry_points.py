"""The shipped code's executor-side entry points, each run alone in a fresh interpreter of a node's
environment (what ``deploy/emr/bootstrap.sh`` installs, and nothing else).

    NODE_PYTHON testkit/nodeenv/entry_points.py SHARDINFER_ZIP WORKDIR STEP

``SHARDINFER_ZIP`` is ``make dist``'s ``shardinfer.zip``: the only place the project's code is
imported from (this script's own folder holds no package), as with ``--py-files`` on a
cluster.  A Spark task imports the module its function lives in and what unpickling its
arguments needs, nothing else: each step here does the same, so a module that uses a package
or submodule it does not import itself (``pa.compute`` without ``import pyarrow.compute``)
fails here, where some earlier import in a long-lived process would have hidden it.

Steps run in the order of :data:`STEPS`, each reading what the one before left in WORKDIR
(``images/``, ``model/`` and the key lists are put there by the caller).  ``import:<module>`` imports one
module and nothing else.
"""

from __future__ import annotations

import os
import sys

BATCH = 4


def prepare_write_part(work: str) -> None:
    """prepare's packing task (prepare.tasks.write_part), then the driver's index over its one part."""
    from common import storage
    from common.manifest import compute_manifest_id, index_to_bytes
    from prepare.tasks import Candidate, PrepareSettings, write_part

    images = f"{work}/images/"
    settings = PrepareSettings(images, f"{work}/shards/", BATCH)
    done = write_part(0, 0, [Candidate(images + n, "") for n in sorted(os.listdir(images))], settings)
    assert done.part.num_images == len(os.listdir(images)) and not done.bad, done
    storage.write_bytes(f"{work}/shards/manifest.parquet",
                        index_to_bytes([done.part], compute_manifest_id([done.digest]), images, BATCH, 0))


def prepare_listing(work: str) -> None:
    """prepare's listing task (prepare.listing.read_source) over a folder and over key lists (CSV, Parquet)."""
    from prepare.listing import Source, read_source

    images = f"{work}/images/"
    keys = [images + k for k in sorted(os.listdir(images))]
    for source in (Source("prefix", images), Source("keys-csv", f"{work}/keys.csv"),
                   Source("keys-parquet", f"{work}/keys.parquet")):
        listed = list(read_source(source, images, None))
        assert sorted(x.key for x in listed) == keys and not any(x.outside for x in listed), (source, listed[:3])


def infer_verify_parts(work: str) -> None:
    """infer's manifest check task (common.manifest.part_problem) over every part."""
    from common.manifest import part_problem, read_manifest

    manifest = read_manifest(f"{work}/shards/manifest.parquet")
    assert [part_problem(p) for p in manifest.parts] == [None] * len(manifest.parts)


def infer_run_group(work: str) -> None:
    """infer's task (infer.task.run_group) over every group of the plan."""
    import numpy as np

    from common import status
    from common.manifest import read_manifest
    from common.model_files import ModelSpec
    from infer.plan import make_plan
    from infer.task import InferSettings, run_group

    manifest = read_manifest(f"{work}/shards/manifest.parquet")
    model = f"{work}/model/"
    spec = ModelSpec(model + "resnet-18-symbol.json", model + "resnet-18-0000.params", model + "synset.txt")
    plan = make_plan(manifest, np.array([[0, manifest.num_shards]]), 1, 1)
    settings = InferSettings(spec, f"{work}/predictions/", "node", manifest.manifest_id)
    rows = [r for g in range(plan.groups) for r in status.records(status.unpack(run_group(g, plan, settings)[0]))]
    assert [r["status"] for r in rows] == ["ok"] * manifest.num_shards, rows
    # --iceberg-table: the same task also describes each file for the commit (pyiceberg on the node)
    from common.iceberg import FileTarget, table_schema

    settings = InferSettings(spec, f"{work}/iceberg-data/", "node", manifest.manifest_id,
                             iceberg=FileTarget.of(table_schema(), {}))
    files = [f for g in range(plan.groups) for f in run_group(g, plan, settings)[1]]
    assert sorted(f.shard_id for f in files) == list(range(manifest.num_shards)), files
    assert sum(f.stats["record_count"] for f in files) == manifest.num_images


def compact_write_bin(work: str) -> None:
    """compact's task (infer.compact.write_bin) over the run's part files."""
    from common.storage import Store
    from infer.compact import write_bin

    folder = f"{work}/predictions/run_id=node"
    parts = sorted(f"{folder}/{n}" for n in os.listdir(folder) if n.endswith(".parquet"))
    key, rows_in, rows_out = write_bin((0, parts), f"{work}/compacted/", "node", Store())
    assert rows_in == rows_out == len(os.listdir(f"{work}/images")), (key, rows_in, rows_out)


STEPS = {f.__name__: f for f in (prepare_listing, prepare_write_part, infer_verify_parts, infer_run_group,
                                 compact_write_bin)}


def main(argv: list[str]) -> int:
    """Run one step (see the module's docstring)."""
    zip_path, work, step = argv
    sys.path.insert(0, os.path.abspath(zip_path))
    if step.startswith("import:"):
        __import__(step[len("import:"):])
    else:
        STEPS[step](os.path.abspath(work))
    print(f"{step}: ok")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # not the interpreter's teardown, which pyarrow's thread pools can abort after the step succeeded
    # (the jobs end the same way: common.cli.exit_process, not imported here so as to import nothing more)
    os._exit(code)
