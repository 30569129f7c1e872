"""Write the tables of docs/models.md that come from the code and the benchmark: the operators the converter
table registers (infer.onnx_ops) and the corpus results (docs/onnx-figures.json, from make bench-onnx).

    .venv/bin/python scripts/onnx_docs.py          # rewrite the blocks between the <!-- ... --> markers
    .venv/bin/python scripts/onnx_docs.py --check  # exit 1 when docs/models.md is not what the code and figures say
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DOC = os.path.join(ROOT, "docs", "models.md")
FIGURES = os.path.join(ROOT, "docs", "onnx-figures.json")


def operators_block() -> str:
    from infer.onnx_graph import MAX_OPSET, MIN_OPSET
    from infer.onnx_ops import FOLDED_ONLY, supported

    converted = [op for op in supported() if op not in FOLDED_ONLY]
    return (f"Converted (opsets {MIN_OPSET}–{MAX_OPSET}), {len(converted)} operators:\n\n"
            + textwrap.fill(", ".join(f"`{op}`" for op in converted), 100)
            + "\n\nOnly ever folded at import (their inputs are constants or shapes): "
            + ", ".join(f"`{op}`" for op in FOLDED_ONLY) + "; and any other standard operator whose inputs "
            "are all known at import.\n")


def results_block() -> str:
    with open(FIGURES) as f:
        figures = json.load(f)
    cpu = figures["cpu"]
    lines = [f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}; {figures['threads']} "
             f"threads for both runtimes, batch {figures['batch']}, median of {figures['rounds']} interleaved rounds "
             "(`make bench-onnx`).", "",
             "| model | exporter | opset | input | imports | max. prob. difference | MXNet img/s | ORT img/s | "
             "MXNet ÷ ORT | bf16 ÷ fp32 (top-1 agr.) | int8 ÷ fp32 (top-1 agr.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def reduced(r: dict, precision: str) -> str:
        p = r.get("reduced", {}).get(precision)
        if not p:
            return ""
        if "error" in p:
            return f"refused: {p['error'][:80]}"
        return f"{p['speed_over_fp32']:.2f} ({p['top1_agreement']:.2f})"

    for r in figures["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | **no**: {r['error']} | | | | | | |")
            continue
        size = "x".join(str(v) for v in r["size"])
        lines.append(f"| {r['model']} | {r['exporter']} | {r['opset']} | {r['layout']} {size} | yes | "
                     f"{r['max_probability_difference']:.1e} | {r['mxnet_img_s']:.1f} | {r['ort_img_s']:.1f} | "
                     f"{r['mxnet_over_ort']:.2f} | {reduced(r, 'bf16')} | {reduced(r, 'int8')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from scripts.docblocks import main as rewrite

    return rewrite(DOC, {"operators": operators_block, "results": results_block}, "scripts/onnx_docs.py", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
