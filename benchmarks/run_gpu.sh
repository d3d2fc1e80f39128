#!/usr/bin/env bash
# GPU variants of benchmarks 1 (graph construction) and 4 (training throughput), in one command:
#   benchmarks/run_gpu.sh            # on a CUDA machine; torch-cluster and FAISS are optional
# Results go to benchmarks/results/, named after the card (e.g. graph_construction_nvidia-h100-80gb-hbm3.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$( [[ -x "$root/.venv/bin/python" ]] && echo "$root/.venv/bin/python" || echo python3 )}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available on this machine')"
"$python" "$root/benchmarks/graph_construction.py" --device cuda "$@"
"$python" "$root/benchmarks/training_throughput.py" --device cuda "$@"
