#!/usr/bin/env bash
# All CPU benchmarks in full mode (about 1.7 hours on 2 cores, the ablation most of it); each writes
# into benchmarks/results/<script>/. Extra arguments go to every script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
for script in graph_construction pipeline retrieval_engine training_throughput gpu_training paper_setting ablation \
              short_codes unseen_classes; do
    "$root/.venv/bin/python" -m "benchmarks.$script" "$@"
done
