"""What `--output-layer`'s unfused layer costs: ResNet-18 forward passes (batch 64, 224², fp32, one thread
as in an executor) with no output layer, with an output layer as infer binds it now (the layer's
consumers read it through BlockGrad, so oneDNN's fusion stops there), and grouped the old way
(fused, wrong values).  Runs interleaved, medians, ratios within one run.

    .venv/bin/python bench/unfused.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.model_graph import unfused_at  # noqa: E402
from testkit import zoo_builder  # noqa: E402

LAYERS = ("conv0_output", "stage3_unit1_conv1_output", "flatten0_output")


def _bind(sym, arg, aux):
    import mxnet as mx

    exe = sym.simple_bind(mx.cpu(), grad_req="null", data=(64, 3, 224, 224))
    for k, v in arg.items():
        if k in exe.arg_dict:
            exe.arg_dict[k][:] = v
    for k, v in aux.items():
        exe.aux_dict[k][:] = v
    return exe


def _time(exe, x) -> float:
    exe.arg_dict["data"][:] = x
    t = time.perf_counter()
    exe.forward(is_train=False)
    for o in exe.outputs:
        o.wait_to_read()
    return time.perf_counter() - t


def _cpu() -> str:
    """The CPU model and the flags that decide MXNet's speed (figures differ several-fold between machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    return f"{model}; " + " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags)


def main() -> int:
    """Print and return the medians and ratios as JSON."""
    import mxnet as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    files = zoo_builder.build_model(seed=0)
    net = mx.sym.load_json(files[zoo_builder.SYMBOL_FILE].decode())
    head = mx.sym.softmax(net.get_children()[0], axis=1)
    saved = mx.nd.load_frombuffer(files[zoo_builder.PARAMS_FILE])
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    variants = {"no output layer": head}
    for layer in LAYERS:
        fixed = unfused_at(head, layer)
        variants[f"{layer}, unfused (now)"] = mx.sym.Group([fixed, fixed.get_internals()[layer]])
        variants[f"{layer}, fused (before)"] = mx.sym.Group([head, head.get_internals()[layer]])
    exes = {name: _bind(sym, arg, aux) for name, sym in variants.items()}
    x = mx.nd.array(np.random.RandomState(0).rand(64, 3, 224, 224).astype(np.float32) * 255)
    times: dict[str, list[float]] = {name: [] for name in exes}
    for exe in exes.values():  # warm-up
        _time(exe, x)
    for _ in range(args.rounds):
        for name, exe in exes.items():
            times[name].append(_time(exe, x))
    base = statistics.median(times["no output layer"])
    out = {"cpu": _cpu(), "threads": os.environ["OMP_NUM_THREADS"],
           "rounds": args.rounds, "ms_per_batch": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
           "ratio_to_no_output_layer": {k: round(statistics.median(v) / base, 3) for k, v in times.items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
