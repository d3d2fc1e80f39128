#!/usr/bin/env bash
# The GPU benchmarks and checks, in one command (at most about 10 minutes on one card):
#   benchmarks/run_gpu.sh [--results DIR]
# GDF_PHOTOS names a folder of real photos, one sub-folder per class (default ../shared/data/flowers102;
# on a machine without it, copy the first 25 class folders of it, about 20 MB, and point GDF_PHOTOS there).
# 1. gpu_checks: kNN graphs under bf16 autocast equal the float32 graphs; a run trained under
#    autocast reports the mAP that `gdf-pyg eval` computes from its checkpoints, exactly.
# 2. training_throughput --amp: GDF-Net (the paper's head and a spatial head) against the bare
#    ResNet-50 at 448 px under bf16 autocast: images/s and peak memory.
# 3. graph_construction: every kNN backend and construction on the card.
# 4. paper_setting --cub-synthetic: one epoch of the paper preset on a CUB-sized synthetic set.
# 5. gpu_training: the paper, cpu and finetune presets fine-tuned on real JPEGs against the bare backbone,
#    the card's busy fraction, host round trips per step, the sync-debug check, loaders and the cache.
# torch-cluster and FAISS are optional. Results are named after the card, in benchmarks/results/<script>/
# unless --results says otherwise. A part that fails is reported and the others still run.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$( [[ -x "$root/.venv/bin/python" ]] && echo "$root/.venv/bin/python" || echo python3 )}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
cd "$root"
results=("$@")
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available on this machine')" || exit 1
"$python" -c "import torch, torch_geometric, timm; print('torch', torch.__version__, '| torch_geometric', torch_geometric.__version__, '| timm', timm.__version__, '|', torch.cuda.get_device_name())"
workers=$(( $(nproc) > 12 ? 12 : $(nproc) - 1 ))
failed=()
part() {  # part NAME SECONDS COMMAND...
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    echo "=== $name"
    if ! timeout "$limit" "$@"; then failed+=("$name"); echo "=== $name FAILED"; fi
    echo "=== $name took $(( SECONDS - t0 )) s"
}
part "mixed-precision checks" 120 "$python" -m benchmarks.gpu_checks --device cuda ${results[@]+"${results[@]}"}
part "training throughput, bf16 autocast" 120 "$python" -m benchmarks.training_throughput --device cuda --amp ${results[@]+"${results[@]}"}
part "graph construction" 120 "$python" -m benchmarks.graph_construction --device cuda ${results[@]+"${results[@]}"}
part "paper preset, one epoch, CUB-sized synthetic set" 150 "$python" -m benchmarks.paper_setting --device cuda \
    --cub-synthetic --workers "$workers" ${results[@]+"${results[@]}"}
photos="${GDF_PHOTOS:-$root/../shared/data/flowers102}"
part "training at the card's speed, real photos" 420 "$python" -m benchmarks.gpu_training --device cuda \
    --photos "$photos" ${results[@]+"${results[@]}"}
if (( ${#failed[@]} )); then echo "failed: ${failed[*]}"; exit 1; fi
