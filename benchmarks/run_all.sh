#!/usr/bin/env bash
# All CPU benchmarks in full mode (about 1.7 hours on 2 cores, the ablation most of it); results in benchmarks/results/
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for script in graph_construction pipeline retrieval_engine training_throughput paper_setting ablation short_codes unseen_classes; do
    "$root/.venv/bin/python" "$root/benchmarks/$script.py" "$@"
done
