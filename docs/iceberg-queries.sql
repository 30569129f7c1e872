-- shardinfer: statements over an Iceberg predictions table (infer --iceberg-table DB.TABLE), for Athena
-- (engine v3) and Trino; docs/iceberg.md says where Athena's syntax differs.  Run them in the table's
-- database.  Replace 'RUN_ID', 'RUN_A', 'RUN_B', SNAPSHOT_ID and 'LOCATION' with values.
-- Each statement below is run by tests/test_trino_iceberg.py in Trino 476's Iceberg connector over the
-- Glue catalog and S3, on real infer output; every answer is checked against pyarrow's reading of the
-- files the table's snapshots list.

-- name: run_overview
-- What each run holds: rows, errors, model, when it was written.
SELECT run_id, count(*) AS images, count_if(status <> 'ok') AS errors, min(model) AS model,
       max(inferred_at) AS written
FROM predictions
GROUP BY run_id
ORDER BY run_id;

-- name: label_counts
-- How many images got each top-1 label in one run (the partition filter reads that run's files only).
SELECT top1_label, count(*) AS images
FROM predictions
WHERE run_id = 'RUN_ID' AND status = 'ok'
GROUP BY top1_label
ORDER BY images DESC, top1_label;

-- name: snapshots
-- Each infer invocation is one snapshot: its summary names the run, the invocation and the counts.
SELECT snapshot_id, operation, summary['shardinfer.run-id'] AS run_id,
       CAST(summary['added-records'] AS bigint) AS rows_added,
       CAST(summary['shardinfer.shards-failed'] AS bigint) AS shards_failed
FROM "predictions$snapshots"
ORDER BY committed_at;

-- name: version_as_of
-- The table as one snapshot had it (what a dashboard read last week): time travel by snapshot id.
SELECT run_id, count(*) AS images
FROM predictions FOR VERSION AS OF SNAPSHOT_ID
GROUP BY run_id
ORDER BY run_id;

-- name: compare_runs
-- Two runs image by image: where the top-1 class differs.
SELECT a.key, a.top1_label AS label_a, b.top1_label AS label_b
FROM predictions a
JOIN predictions b ON a.key = b.key
WHERE a.run_id = 'RUN_A' AND b.run_id = 'RUN_B' AND a.status = 'ok' AND b.status = 'ok'
  AND a.top1_class_id <> b.top1_class_id
ORDER BY a.key;

-- name: latest_table
-- "Latest prediction per key", kept as a table of its own: made once (Trino; Athena: docs/iceberg.md) ...
CREATE TABLE latest_predictions (
  key varchar, run_id varchar, top1_label varchar, top1_prob double, inferred_at timestamp(6) with time zone
) WITH (location = 'LOCATION');

-- name: merge_latest
-- ... and each run merged into it as it lands: a key's row is replaced only by a newer prediction.
MERGE INTO latest_predictions t
USING (SELECT key, run_id, top1_label, top1_prob, inferred_at
       FROM predictions WHERE run_id = 'RUN_ID' AND status = 'ok') s
ON t.key = s.key
WHEN MATCHED AND s.inferred_at > t.inferred_at THEN
  UPDATE SET run_id = s.run_id, top1_label = s.top1_label, top1_prob = s.top1_prob, inferred_at = s.inferred_at
WHEN NOT MATCHED THEN
  INSERT (key, run_id, top1_label, top1_prob, inferred_at)
  VALUES (s.key, s.run_id, s.top1_label, s.top1_prob, s.inferred_at);

-- name: optimize
-- Compaction: a run's small per-shard files rewritten into large ones, the same rows
-- (Athena: OPTIMIZE predictions REWRITE DATA USING BIN_PACK WHERE run_id = 'RUN_ID').
ALTER TABLE predictions EXECUTE optimize WHERE run_id = 'RUN_ID';

-- name: expire_snapshots
-- Snapshots older than the threshold go, and the files only they referred to (a deleted run's, compacted
-- files' originals) are deleted (Athena: VACUUM predictions, after vacuum_max_snapshot_age_seconds).
ALTER TABLE predictions EXECUTE expire_snapshots(retention_threshold => '7d');
