"""See the run: progress lines, per-shard timings, the run report, Spark's event log."""

from __future__ import annotations

import re
import uuid

import pytest

from common import storage
from testkit.localdev import run_spark_submit, upload_cifar_like
from tests.helpers import infer_args, statuses

pytestmark = pytest.mark.spark  # every test here runs the jobs


@pytest.fixture(scope="module")
def watched_run(s3, model_uris, tmp_path_factory):
    """prepare (--verbose) + infer through spark-submit on 40 images (5 shards of 8), progress as plain lines,
    event log on, a secret key and session token of their own in the environment."""
    s3.create_bucket("watched")
    upload_cifar_like("s3://watched/in/", 40, seed=71, endpoint_url=s3.endpoint_url)
    events = tmp_path_factory.mktemp("events")
    secret = f"SECRET-{uuid.uuid4().hex}"
    env = {**s3.env, "SHARDINFER_PROGRESS": "lines", "SHARDINFER_PROGRESS_INTERVAL": "1",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": f"TOKEN-{secret}"}
    conf = ["spark.master=local[2]", f"spark.eventLog.dir=file://{events}/new-dir"]
    p = run_spark_submit("prepare/main.py", ["--input", "s3://watched/in/", "--output", "s3://watched/shards/",
                                             "--batch", "8", "--verbose"], env, conf)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    i = run_spark_submit("infer/main.py", infer_args("s3://watched/shards/manifest.parquet", model_uris,
                                                     "s3://watched/pred/", "--run-id", "w"), env, conf)
    assert i.returncode == 0, i.stdout[-2000:] + i.stderr[-2000:]
    return {"prepare": p, "infer": i, "events": events / "new-dir", "env": env, "secret": secret}


def test_progress_lines_end_with_everything_done(watched_run):
    prep = watched_run["prepare"].stdout
    assert re.search(r"^prepare: progress 5/5 shards, 40/40 images, [\d.]+ images/s, 0 failed, .* done$", prep, re.M)
    out = watched_run["infer"].stdout
    assert re.search(r"^infer: progress 5/5 shards, 40/40 images, [\d.]+ images/s, 0 failed, .* done$", out, re.M)


def test_timings_present_and_ordered(watched_run):
    st = statuses("s3://watched/pred/", "w")
    assert sorted(st) == [0, 1, 2, 3, 4]
    for s in st.values():
        assert s["t_task_start"] <= s["t_start"] <= s["t_fetched"] <= s["t_decoded"] <= s["t_forwarded"] <= s["t_end"]
        assert s["host"] and s["pid"] > 0


def test_report_written_at_the_end_of_infer(watched_run):
    out = watched_run["infer"].stdout
    assert "infer: report s3://watched/pred/_runs/w/report/index.html" in out
    page = storage.read_bytes("s3://watched/pred/_runs/w/report/index.html").decode()
    images = re.findall(r"<img src='([^']+)'", page)
    assert sorted(images) == ["shard_times.png", "throughput.png", "timeline.png"]
    for name in images:  # every image the page shows is there, and is a PNG
        assert storage.read_bytes(f"s3://watched/pred/_runs/w/report/{name}").startswith(b"\x89PNG\r\n\x1a\n")
    # the timeline's data: one bar set (a row of the shard table) per shard
    assert sorted(int(x) for x in re.findall(r"data-shard='(\d+)'", page)) == [0, 1, 2, 3, 4]


def test_report_command_on_demand(watched_run, tmp_path):
    from infer.report import main

    assert main(["--output", "s3://watched/pred/", "--run-id", "w", "--to", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["index.html", "shard_times.png", "throughput.png", "timeline.png"]
    page = (tmp_path / "index.html").read_text()
    assert all(f"<img src='{name}'" in page for name in files if name.endswith(".png"))
    assert main(["--output", "s3://watched/pred/", "--run-id", "nope"]) == 2


def test_event_log_written_to_the_configured_directory(watched_run):
    logs = list(watched_run["events"].iterdir())
    assert len(logs) == 2  # prepare and infer, in a directory that did not exist before
    assert all("local-" in p.name or "app-" in p.name for p in logs)


def test_secret_key_is_never_written(watched_run, model_uris, tmp_path):
    """Credentials in the environment: nothing the runs write (logs, records, event logs, output) holds the
    secret — the watched run (prepare with --verbose) and an infer with --verbose over a damaged shard (the
    error paths too)."""
    secret, events = watched_run["secret"], tmp_path / "events"
    events.mkdir()
    shard = "s3://watched/shards/shards/shard-00001.rec"
    good = storage.read_bytes(shard)
    storage.write_bytes(shard, b"damaged")
    try:
        i = run_spark_submit("infer/main.py", infer_args("s3://watched/shards/manifest.parquet", model_uris,
                                                         "s3://watched/secret-pred/", "--verbose"), watched_run["env"],
                             ["spark.master=local[2]", f"spark.eventLog.dir=file://{events}"])
    finally:
        storage.write_bytes(shard, good)
    assert i.returncode == 1, i.stderr[-3000:]
    outputs = [watched_run[k].stdout + watched_run[k].stderr for k in ("prepare", "infer")] + [i.stdout + i.stderr]
    written = [storage.read_bytes(f"s3://watched/{o.key}") for o in storage.list_objects("s3://watched/")
               if not o.key.startswith("in/")]
    event_files = [f.read_bytes() for d in (events, watched_run["events"]) for f in d.rglob("*") if f.is_file()]
    assert len(event_files) >= 3, "no Spark event log was written"
    assert len(written) > 10 and any(o.key.startswith("secret-pred/") for o in storage.list_objects("s3://watched/"))
    for blob in [o.encode() for o in outputs] + written + event_files:
        assert secret.encode() not in blob


def test_report_counts_a_shard_whose_writing_try_was_lost():
    """A killed worker's try wrote the part file but never reported; the retry finds the file and
    records it as written with no timings (found by the chaos run): the report counts its rows."""
    from infer.report import render_html, render_images

    timed = {"shard_id": 0, "status": "ok", "outcome": "written", "rows": 64, "rows_error": 0, "host": "h", "pid": 1,
             "t_start": 10.0, "t_fetched": 10.5, "t_decoded": 11.0, "t_forward_start": None, "t_forwarded": 12.0,
             "t_end": 12.2}
    lost = {"shard_id": 1, "status": "ok", "outcome": "written", "rows": 40, "rows_error": 1, "host": "h", "pid": 2,
            "t_start": 13.0, "t_fetched": None, "t_decoded": None, "t_forward_start": None, "t_forwarded": None,
            "t_end": 13.1}
    earlier = {**lost, "shard_id": 2, "outcome": "already present", "rows": 0, "rows_error": 0}
    records = [timed, lost, earlier]
    page = render_html("r", records, list(render_images(records)))
    assert "images written: 104; image errors: 1" in page
    assert "1 run in this report's timings, 1 written by a try that was lost" in page and "1 already done" in page
    assert "data-shard='1'" in page and "data-shard='2'" not in page
