#!/usr/bin/env bash
# Spark's GPU discovery script for shardinfer's --device gpu (spark.executor.resource.gpu.discoveryScript):
# prints the node's GPUs as Spark's ResourceInformation JSON, e.g. {"name":"gpu","addresses":["0","1"]}.
# YARN does not tell an executor which GPUs its container holds; Spark runs this script when the executor
# starts. Shipped with each job (`--files .../discover-gpus.sh`, then `./discover-gpus.sh`).
set -euo pipefail
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader)
addresses=""
for id in $ids; do
  addresses="${addresses:+$addresses,}\"$id\""
done
echo "{\"name\":\"gpu\",\"addresses\":[$addresses]}"
