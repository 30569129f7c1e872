"""Model-only throughput: P processes, each binding the model exactly as infer does, forwarding at once.

    python bench/modelonly.py --model-dir DIR --procs 2 --threads 1 --batches 8

Each process binds :class:`common.model.Predictor` (Module API, static 64x3x224x224 shape,
MKLDNN subgraph fusion) with OMP_NUM_THREADS=threads, warms up, waits at a start line, then
times ``--batches`` forward passes of random 0..255 input.  Prints one JSON line: images/s
of all processes together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child(model_dir: str, batches: int, go_file: str, ready_file: str) -> None:
    import numpy as np

    from common.model import Predictor
    from testkit import zoo_builder

    # the same file names whatever the precision: bench/run.py writes each converted model to its own directory
    p = Predictor(zoo_builder.local_spec(model_dir))
    x = np.random.default_rng(0).uniform(0, 255, (p.batch_size, 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        p.predict(x)
    open(ready_file, "w").close()
    while not os.path.exists(go_file):
        time.sleep(0.01)
    t = time.perf_counter()
    for _ in range(batches):
        p.predict(x)
    print(json.dumps({"images": batches * p.batch_size, "seconds": time.perf_counter() - t}), flush=True)


def measure(model_dir: str, procs: int, threads: int, batches: int) -> dict:
    """Run ``procs`` children at once; returns ``{"images_per_s", "procs", "threads", ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        kids = [subprocess.Popen([sys.executable, __file__, "--child", "--model-dir", model_dir, "--batches",
                                  str(batches), "--go", go, "--ready", os.path.join(tmp, f"ready{i}")],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for i in range(procs)]
        while not all(os.path.exists(os.path.join(tmp, f"ready{i}")) for i in range(procs)):
            time.sleep(0.05)
        open(go, "w").close()
        results = [json.loads(k.communicate()[0].strip().splitlines()[-1]) for k in kids]
    # all started together: the slowest process bounds the common window
    seconds = max(r["seconds"] for r in results)
    images = sum(r["images"] for r in results)
    return {"procs": procs, "threads": threads, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--go", help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.model_dir, a.batches, a.go, a.ready)
    else:
        print(json.dumps(measure(a.model_dir, a.procs, a.threads, a.batches)))


if __name__ == "__main__":
    main()
