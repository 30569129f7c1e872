"""The run report: where the time went, per executor and per shard.

    python -m infer.report --output s3://BUCKET/predictions/ --run-id ID [--to DIR]

Reads the run's status files (``<output>/_runs/<run_id>/status/*.parquet``, one per infer
invocation; each shard's latest status counts) and writes, to
``<output>/_runs/<run_id>/report/`` (or ``--to``), an ``index.html`` and the PNG images it
shows:

* ``timeline.png`` — one lane per executor Python process; each shard is a set of bars,
  fetch / decode / forward / write in four colours (inside a task group the next shard's
  fetch and decode overlap the current shard's forward pass: the picture shows whether
  the model waits for its input);
* ``throughput.png`` — images finished per second over the run;
* ``shard_times.png`` — the distribution of per-shard time by stage;

plus the totals, the failed shards with their errors, and a table of every shard's
timings (the same numbers the timeline draws).  infer writes it at the end of each run.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from common import (
    status,  # noqa: E402
    storage,  # noqa: E402
)
from common.cli import UsageError, Writes, add_common_arguments, exit_process, run_cli  # noqa: E402
from common.output import check_run_id, run_dir  # noqa: E402
from common.settings import store_from  # noqa: E402

PROG = "report"
STAGES = (("fetch", "t_start", "t_fetched", "#4e79a7"), ("decode", "t_fetched", "t_decoded", "#f28e2b"),
          ("forward", "t_forward_start", "t_forwarded", "#59a14f"), ("write", "t_forwarded", "t_end", "#e15759"))
IMAGES = ("timeline.png", "throughput.png", "shard_times.png")
# Beyond this many shards the pictures and the table show an evenly spaced sample (said on the page).
MAX_DRAWN = 20_000


def load_statuses(output: str, run_id: str, endpoint_url: storage.Endpoint = None) -> list[dict]:
    """Every shard's status record of a run, by shard id; UsageError when there is none."""
    latest = status.read_latest(output, run_id, endpoint_url)
    if latest.num_rows == 0:
        raise UsageError(f"run {run_id}: no status files under {status.status_dir(output, run_id)}/")
    if latest.num_rows > MAX_DRAWN:  # every failure, and an even sample of the rest
        failed = pc.not_equal(latest.column("status"), "ok").to_numpy(zero_copy_only=False)
        keep = np.flatnonzero(failed | (np.arange(latest.num_rows) % math.ceil(latest.num_rows / MAX_DRAWN) == 0))
        latest = latest.take(pa.array(keep))
    return status.records(latest)


def timed(records: list[dict]) -> list[dict]:
    """The records that ran the model in this invocation (they carry all stage timestamps)."""
    runs = [r for r in records if r.get("status") == "ok" and all(r.get(k) is not None for k in (
        "t_start", "t_fetched", "t_decoded", "t_forwarded", "t_end"))]
    for r in runs:  # records from before task groups: the forward pass began as decoding ended
        if r.get("t_forward_start") is None:
            r["t_forward_start"] = r["t_decoded"]
    return runs


def written(records: list[dict]) -> list[dict]:
    """The records whose shard this invocation wrote: timed ones, and those an earlier try of the same
    task wrote before it was lost (a killed worker or executor: found on retry, no timings)."""
    return [r for r in records if r.get("status") == "ok" and r.get("outcome") == "written"]


def lanes(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by executor Python process (``host:pid``), each lane in time order."""
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["t_start"]):
        out.setdefault(f"{r.get('host', '?')}:{r.get('pid', '?')}", []).append(r)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def warm_up() -> None:
    """Import the chart library (~0.5 s) ahead of :func:`render_images`: infer calls it on a thread of its own
    while the tasks run, when the driver has nothing else to do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def render_images(records: list[dict]) -> dict[str, bytes]:
    """The three PNGs, as bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = timed(records)
    t0 = min((r["t_start"] for r in runs), default=0.0)
    out = {}

    by_lane = lanes(runs)
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.55 * max(1, len(by_lane))))
    for y, (lane, recs) in enumerate(sorted(by_lane.items())):
        for r in recs:
            for _, a, b, colour in STAGES:
                ax.barh(y, r[b] - r[a], left=r[a] - t0, height=0.6, color=colour, edgecolor="none")
    ax.set_yticks(range(len(by_lane)), sorted(by_lane))
    ax.set_xlabel("seconds since the first shard started")
    ax.set_title("Per-executor timeline: each shard's fetch / decode / forward / write")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for *_, c in STAGES], labels=[s[0] for s in STAGES],
              loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False)
    out["timeline.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 3))
    if runs:
        # images/s over a sliding window (a tenth of the run, at least 10 s) at each shard's end:
        # shards finish in bursts, so per-second bins would only show the bursts
        ends = sorted((r["t_end"] - t0, r.get("rows", 0)) for r in runs)
        window = max(10.0, ends[-1][0] / 10)
        xs, ys = [], []
        for t, _ in ends:
            done = sum(n for u, n in ends if t - window < u <= t)
            xs.append(t)
            ys.append(done / min(window, max(t, 1e-9)))
        ax.plot(xs, ys, color="#59a14f", marker=".")
        ax.axhline(sum(n for _, n in ends) / max(ends[-1][0], 1e-9), color="#888", linestyle="--",
                   label="average over the run")
        ax.legend(loc="lower right", frameon=False)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the first shard started")
    ax.set_ylabel("images/s")
    ax.set_title("Throughput over the run (images finished per second, sliding window)")
    out["throughput.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 3))
    data = [[r[b] - r[a] for r in runs] for _, a, b, _ in STAGES]
    if runs:
        ax.boxplot(data, vert=False, tick_labels=[s[0] for s in STAGES])
    ax.set_xlabel("seconds per shard")
    ax.set_title(f"Per-shard time by stage ({len(runs)} shards)")
    out["shard_times.png"] = _png(fig)
    plt.close(fig)
    return out


def render_html(run_id: str, records: list[dict], images: Sequence[str]) -> str:
    """The report page; it shows every image in ``images`` and a table of every timed shard."""
    runs = timed(records)
    failed = [r for r in records if r.get("status") != "ok"]
    wrote = written(records)
    timed_ids = {id(r) for r in runs}  # identity, not dict equality: up to MAX_DRAWN records
    untimed = [r for r in wrote if id(r) not in timed_ids]
    untimed_ids = {id(r) for r in untimed}
    done = [r for r in records if r.get("status") == "ok" and id(r) not in timed_ids and id(r) not in untimed_ids]
    rows = sum(r.get("rows") or 0 for r in wrote)
    span = (max(r["t_end"] for r in runs) - min(r["t_start"] for r in runs)) if runs else 0.0
    stage_totals = {name: sum(r[b] - r[a] for r in runs) for name, a, b, _ in STAGES}
    busy = sum(stage_totals.values()) or 1.0
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>shardinfer run {e(run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}"
        "th{background:#eee}.err{color:#b00}</style></head><body>",
        f"<h1>Run {e(run_id)}</h1>",
        "<h2>Totals</h2><ul>",
        f"<li>shards: {len(records)} recorded, {len(runs)} run in this report's timings, {len(untimed)} written by a "
        f"try that was lost before it reported (no timings), {len(done)} already done earlier, {len(failed)} "
        "failed</li>",
        f"<li>images written: {rows}; image errors: {sum(r.get('rows_error') or 0 for r in wrote)}</li>",
        f"<li>first shard start to last shard end: {span:.1f} s = "
        f"{(rows / span if span else 0):.1f} images/s</li>",
        "<li>time in stages: " + ", ".join(f"{k} {v:.1f} s ({v / busy:.0%})" for k, v in stage_totals.items()) + "</li>",
        f"<li>executor processes: {len(lanes(runs))}; model loads: {sum(1 for r in runs if r.get('model_loaded'))}</li>",
        "</ul>",
    ]
    for name in images:
        parts.append(f"<h2>{e(name[:-4].replace('_', ' ').capitalize())}</h2><img src='{e(name)}' alt='{e(name)}' "
                     "style='max-width:100%'>")
    parts.append(f"<h2>Failed shards ({len(failed)})</h2>")
    if failed:
        parts.append("<table><tr><th>shard</th><th>error</th></tr>" + "".join(
            f"<tr><td>{r['shard_id']}</td><td class='err' style='text-align:left'>{e(r.get('error', ''))}</td></tr>"
            for r in failed) + "</table>")
    else:
        parts.append("<p>none</p>")
    parts.append("<h2>Shards</h2><table id='shards'><tr><th>shard</th><th>executor</th><th>start s</th>"
                 + "".join(f"<th>{n} s</th>" for n, *_ in STAGES) + "<th>rows</th></tr>")
    t0 = min((r["t_start"] for r in runs), default=0.0)
    for r in sorted(runs + untimed, key=lambda r: r["shard_id"]):
        cells = ([f"{r['t_start'] - t0:.2f}"] + [f"{r[b] - r[a]:.3f}" for _, a, b, _ in STAGES]
                 if id(r) in timed_ids else ["–"] * (1 + len(STAGES)))
        parts.append(f"<tr class='shard' data-shard='{r['shard_id']}'><td>{r['shard_id']}</td>"
                     f"<td>{e(str(r.get('host')))}:{r.get('pid')}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                     + f"<td>{r.get('rows') or 0}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(output: str, run_id: str, endpoint_url: storage.Endpoint = None, to: Optional[str] = None,
                 writing=lambda where: None, encryption: Optional[storage.Encryption] = None) -> str:
    """Build the report for a run and write it (calling ``writing(folder)`` first); returns the URI of
    ``index.html``."""
    records = load_statuses(output, run_id, endpoint_url)
    images = render_images(records)
    dest = to or storage.join(run_dir(output, run_id), "report")
    writing(dest)
    for name, data in images.items():
        storage.write_bytes(storage.join(dest, name), data, endpoint_url, "image/png", encryption=encryption)
    index = storage.join(dest, "index.html")
    storage.write_bytes(index, render_html(run_id, records, list(images)).encode(), endpoint_url, "text/html",
                        encryption=encryption)
    return index


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m infer.report", description="Write the HTML + PNG report of a "
                                "finished (or failed) infer run from its status files.")
    p.add_argument("--output", required=True, help="infer's --output, e.g. s3://BUCKET/predictions/")
    p.add_argument("--run-id", required=True, help="the run")
    p.add_argument("--to", default=None, help="write the report here instead of <output>/_runs/<run_id>/report/ "
                   "(a local directory is handy for viewing)")
    add_common_arguments(p)
    return p


def run(args: argparse.Namespace, writes: Writes) -> int:
    """Write the report and print where it is."""
    store = store_from(args)
    index = write_report(args.output, check_run_id(args.run_id), store, args.to,
                         writing=lambda where: writes.begin(f"the report under {where}", "run the same command again"),
                         encryption=store.encryption)
    print(f"{PROG}: {index}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    return run_cli(PROG, run, build_parser(), argv)


if __name__ == "__main__":
    exit_process(main())
