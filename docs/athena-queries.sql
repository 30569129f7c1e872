-- shardinfer: example Athena (engine v3) queries over the predictions table.
-- Replace 'RUN_ID', 'RUN_A', 'RUN_B' with run ids (see _runs/ or SHOW PARTITIONS predictions),
-- and 'KEY' with an image's key.
-- Each query below is run by tests/test_trino.py in Trino 476 (Athena engine v3's engine) over the
-- Glue catalog and S3, and by tests/test_athena.py in DuckDB (after sqlglot's Athena -> DuckDB
-- translation), on real infer output; both results are checked against pyarrow's rows.

-- name: label_counts
-- How many images got each top-1 label, per run.
SELECT run_id, top1_label, count(*) AS images
FROM predictions
WHERE status = 'ok'
GROUP BY run_id, top1_label
ORDER BY run_id, images DESC, top1_label;

-- name: low_confidence
-- Images whose best class has a probability below a threshold.
SELECT key, top1_label, top1_prob
FROM predictions
WHERE run_id = 'RUN_ID' AND status = 'ok' AND top1_prob < 0.3
ORDER BY top1_prob, key;

-- name: error_rows
-- Images that could not be decoded: status says why, predictions are null.
SELECT run_id, key, shard_id, record, status
FROM predictions
WHERE status <> 'ok'
ORDER BY run_id, shard_id, record;

-- name: compare_runs
-- Two runs (for example two models) image by image: where the top-1 class differs.
SELECT a.key, a.top1_label AS label_a, a.top1_prob AS prob_a, b.top1_label AS label_b, b.top1_prob AS prob_b
FROM predictions AS a
JOIN predictions AS b ON a.key = b.key
WHERE a.run_id = 'RUN_A' AND b.run_id = 'RUN_B' AND a.status = 'ok' AND b.status = 'ok'
  AND a.top1_class_id <> b.top1_class_id
ORDER BY a.key;

-- name: agreement
-- Two runs in one line: images compared, how many keep their top-1 class.
SELECT count(*) AS images,
       count_if(a.top1_class_id = b.top1_class_id) AS same_top1,
       avg(abs(a.top1_prob - b.top1_prob)) AS mean_abs_prob_change
FROM predictions AS a
JOIN predictions AS b ON a.key = b.key
WHERE a.run_id = 'RUN_A' AND b.run_id = 'RUN_B' AND a.status = 'ok' AND b.status = 'ok';

-- name: unnest_top_k
-- One row per image and rank: the whole top-k list, best first.
SELECT p.key, t.i AS rank, p.top_k[t.i].class_id AS class_id, p.top_k[t.i].label AS label, p.top_k[t.i].prob AS prob
FROM predictions AS p
CROSS JOIN UNNEST(sequence(1, cardinality(p.top_k))) AS t(i)
WHERE p.run_id = 'RUN_ID' AND p.status = 'ok'
ORDER BY p.key, rank;

-- name: run_overview
-- What each run holds: model, manifest, rows, errors, when.
SELECT run_id, model, manifest_id, count(*) AS images, count_if(status <> 'ok') AS errors,
       min(inferred_at) AS first_written, max(inferred_at) AS last_written
FROM predictions
GROUP BY run_id, model, manifest_id
ORDER BY run_id;

-- name: failed_shards
-- Which shards of a run failed, and why: each shard's latest status over every infer invocation,
-- from the status table (python -m infer.athena --output ... --status prints its DDL).
SELECT shard_id, max_by(error, t_end) AS error, max_by(executor_host, t_end) AS host, max(t_end) AS failed_at
FROM (SELECT shard_id, status, error, host AS executor_host, t_end FROM shardinfer_status WHERE run_id = 'RUN_ID')
GROUP BY shard_id
HAVING max_by(status, t_end) <> 'ok'
ORDER BY shard_id;

-- name: latest_per_key
-- Daily increments (one manifest per day packed with prepare --exclude-manifest, one run per manifest,
-- or a new model's run over old images): each image's latest prediction across every run. Athena:
-- CREATE OR REPLACE VIEW latest_predictions AS <this query>, then query latest_predictions.
SELECT key, max_by(run_id, inferred_at) AS run_id, max_by(top1_label, inferred_at) AS top1_label,
       max_by(top1_prob, inferred_at) AS top1_prob, max(inferred_at) AS inferred_at
FROM predictions
WHERE status = 'ok'
GROUP BY key
ORDER BY key;

-- name: similar_images
-- Similarity search over embeddings (a run made with infer --output-layer, e.g. flatten0_output):
-- the 10 images nearest to one image by cosine similarity, best first.
WITH q AS (SELECT embedding AS e FROM predictions WHERE run_id = 'RUN_ID' AND key = 'KEY')
SELECT p.key, p.top1_label,
       reduce(zip_with(p.embedding, q.e, (x, y) -> x * y), 0.0E0, (s, v) -> s + v, s -> s)
       / sqrt(reduce(p.embedding, 0.0E0, (s, v) -> s + v * v, s -> s)
              * reduce(q.e, 0.0E0, (s, v) -> s + v * v, s -> s)) AS cosine
FROM predictions AS p
CROSS JOIN q
WHERE p.run_id = 'RUN_ID' AND p.status = 'ok' AND p.key <> 'KEY'
ORDER BY cosine DESC, p.key
LIMIT 10;
