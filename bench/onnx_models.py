"""Model-only speed of every corpus architecture: MXNet as infer binds it against ONNX Runtime, same CPU and threads.

    python bench/onnx_models.py [--threads 2] [--batch 16] [--rounds 3] [--out docs/onnx-figures.json] [NAME ...]

For each model of testkit/corpus/models (weights refilled, testkit/onnx_corpus.py): import it
(infer.onnx_graph), bind it as infer does (common.model.BoundModel: static batch, oneDNN fusion on),
and open an ONNX Runtime session of the same file (all graph optimisations, ``intra_op_num_threads``
= threads, MXNet with ``OMP_NUM_THREADS`` = threads).  Each round times a few forward passes of each,
alternating, and the figure is the ratio of the medians within this one run (these machines are shared
and noisy).  Also printed: the import's own check (largest probability difference to ONNX Runtime) and
the conversion time.  One JSON object per model and a table; ``--out`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reduced(converted, x, fp32_model, fp32_s: float, precision: str, rounds: int) -> dict:
    """The model converted as infer's --precision does (AMP bf16, or oneDNN int8 calibrated on 2 batches of
    this input's kind): its speed over fp32 MXNet, and its top-1 agreement with fp32 on ``x``."""
    import mxnet as mx
    import numpy as np

    from common.model import BoundModel

    sym = mx.sym.load_json(converted.symbol_json)
    arg = {k: v.copy() for k, v in converted.arg.items()}
    aux = {k: v.copy() for k, v in converted.aux.items()}
    try:
        if precision == "bf16":
            import mxnet.contrib.amp  # noqa: F401

            csym, carg, caux = mx.contrib.amp.convert_model(sym, arg, aux, target_dtype="bfloat16",
                                                            cast_optional_params=True)
        else:
            from mxnet.contrib.quantization import quantize_model_mkldnn

            cal = np.concatenate([x, x[::-1] * 0.5])
            data = mx.io.NDArrayIter(data={"data": cal}, batch_size=len(x))
            csym, carg, caux = quantize_model_mkldnn(sym, arg, aux, ctx=mx.cpu(), data_names=("data",),
                                                     label_names=None, calib_mode="naive", calib_data=data,
                                                     num_calib_examples=len(cal), quantized_dtype="auto")
        model = BoundModel(csym, carg, caux, len(x), image_size=converted.probe_size)
        model.forward(x)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            out = model.forward(x)
            times.append(time.perf_counter() - t)
    except Exception as e:  # noqa: BLE001 - MXNet refuses some graphs at some precisions: say which
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"}
    reference = fp32_model.forward(x).argmax(axis=1)
    return {"speed_over_fp32": round(fp32_s / statistics.median(times), 3),
            "top1_agreement": float((out.argmax(axis=1) == reference).mean())}


def measure_one(name: str, threads: int, batch: int, rounds: int, precisions: tuple = ()) -> dict:
    """Run in a child process (OMP_NUM_THREADS must be set before MXNet loads)."""
    import mxnet as mx
    import numpy as np
    import onnxruntime as ort

    from common.model import BoundModel
    from infer import onnx_check, onnx_graph
    from testkit import onnx_corpus
    from testkit.corpus import MODELS_DIR

    with open(os.path.join(MODELS_DIR, f"{name}.onnx"), "rb") as f:
        data = onnx_corpus.fill(f.read())
    source = onnx_corpus.source_of(__import__("onnx").load_model_from_string(data))
    started = time.perf_counter()
    model = onnx_graph.load(data, name)
    converted = onnx_graph.convert(model, name)
    convert_s = time.perf_counter() - started
    full = model.SerializeToString()
    agreement = onnx_check.compare(converted, full, onnx_check.check_batch(converted.probe_size))
    x = onnx_check.check_batch(converted.probe_size, n=batch, seed=1)
    bound = BoundModel(mx.sym.load_json(converted.symbol_json), converted.arg, converted.aux, batch,
                       image_size=converted.probe_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(full, options, providers=["CPUExecutionProvider"])
    # its own loop (not onnx_check.run_onnxruntime): the NHWC transpose is made once, outside the timing
    feed = x if converted.layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    step = converted.fixed_batch or batch
    inp = session.get_inputs()[0].name

    def run_ort() -> None:
        for i in range(0, batch, step):
            session.run(None, {inp: feed[i:i + step]})

    def run_mx() -> None:
        bound.forward(x)

    for fn in (run_mx, run_ort):  # warm up: oneDNN primitives, ORT's arena
        fn()
        fn()
    times = {"mxnet": [], "ort": []}
    for _ in range(rounds):
        for key, fn in (("mxnet", run_mx), ("ort", run_ort)):
            t = time.perf_counter()
            fn()
            fn()
            times[key].append((time.perf_counter() - t) / 2)
    mx_s, ort_s = statistics.median(times["mxnet"]), statistics.median(times["ort"])
    reduced = {}
    for precision in precisions:
        reduced[precision] = _reduced(converted, x, bound, mx_s, precision, rounds)
    return {**({"reduced": reduced} if reduced else {}), "model": name, "exporter": source.get("exporter"),
            "opset": source.get("opset"),
            "layout": converted.layout, "size": list(converted.probe_size), "nodes": sum(converted.nodes.values()),
            "folded": converted.folded, "convert_s": round(convert_s, 2),
            "max_probability_difference": agreement.max_difference, "top1_disagreements": agreement.top1_disagreements,
            "mxnet_img_s": round(batch / mx_s, 1), "ort_img_s": round(batch / ort_s, 1),
            "mxnet_over_ort": round(ort_s / mx_s, 3), "batch": batch, "threads": threads}


def cpu() -> dict:
    """The CPU's model name and the flags the figures depend on."""
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {"model": model, "cores": os.cpu_count(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="corpus models (default: all but the refused ones)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--precisions", default="fp32", help="also bf16 and/or int8, e.g. fp32,bf16,int8: each converted "
                   "as infer's --precision does, timed against fp32 MXNet, top-1 agreement with fp32")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        precisions = tuple(p for p in args.precisions.split(",") if p and p != "fp32")
        print(json.dumps(measure_one(args.child, args.threads, args.batch, args.rounds, precisions)), flush=True)
        return 0
    from testkit.corpus import MODELS_DIR

    names = args.names or sorted(f[:-5] for f in os.listdir(MODELS_DIR)
                                 if f.endswith(".onnx") and not f.startswith("refused-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(args.threads), "--batch",
                              str(args.batch), "--rounds", str(args.rounds), "--precisions", args.precisions],
                             env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"model": name, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"cpu": cpu(), "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
              "precisions": args.precisions, "models": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"{'model':48s} {'MXNet img/s':>11s} {'ORT img/s':>10s} {'MXNet/ORT':>9s} {'max diff':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:48s} error: {r['error']}")
            continue
        print(f"{r['model']:48s} {r['mxnet_img_s']:11.1f} {r['ort_img_s']:10.1f} {r['mxnet_over_ort']:9.2f} "
              f"{r['max_probability_difference']:9.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
