#!/usr/bin/env bash
# All CPU benchmarks in full mode (each at most about 10 minutes on 2 cores); results in benchmarks/results/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for script in graph_construction retrieval_engine training_throughput ablation paper_setting; do
    "$root/.venv/bin/python" "$root/benchmarks/$script.py" "$@"
done
