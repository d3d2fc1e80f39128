#!/usr/bin/env bash
# One-command set-up of the gdf-pyg development environment.
#
# Creates .venv in the repository, installs the pinned torch/torchvision and gdf-pyg in editable
# mode with its test, FAISS, benchmark, serve and hub extras: everything the main job and the tests need.
#   scripts/setup.sh                  # the above (what `make demo` runs)
#   scripts/setup.sh --with-cluster   # also torch-cluster, for the tests, the benchmarks and
#                                     # backend="torch_cluster" (what `make test` runs)
# torch-cluster compiles from source for several minutes: it is built only when asked for, once;
# the wheel is cached outside the repository and reused by every later set-up.
#
# Environment overrides:
#   PYTHON                   interpreter used to create the venv         (default: python3.11)
#   GDF_TORCH_VERSION        torch version                               (default: 2.14.1)
#   GDF_TORCHVISION_VERSION  torchvision version                         (default: 0.29.1)
#   GDF_TORCH_CLUSTER_VERSION torch-cluster version built from source    (default: 1.6.3)
#   MAX_JOBS                 extensions compiled at once                 (default: nproc)
#   GDF_WHEEL_CACHE          where built wheels are kept (default: ${XDG_CACHE_HOME:-~/.cache}/gdf-pyg/wheels)
#   GDF_SKIP_TORCH_CLUSTER=1 never build torch-cluster, even with --with-cluster (the dense backend needs nothing)
#   GDF_EXTRAS               extras installed with the package           (default: test,faiss,bench,serve,hub)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${GDF_TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${GDF_TORCHVISION_VERSION:-0.29.1}"
CLUSTER_VERSION="${GDF_TORCH_CLUSTER_VERSION:-1.6.3}"
WHEEL_CACHE="${GDF_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gdf-pyg/wheels}"
EXTRAS="${GDF_EXTRAS:-test,faiss,bench,serve,hub}"
VENV="$root/.venv"
PIP="$VENV/bin/python -m pip"

with_cluster=0
force=0
for arg in "$@"; do
    case "$arg" in
        --with-cluster) with_cluster=1 ;;
        --force) force=1 ;;
        *) echo "[setup] unknown option $arg (expected --with-cluster, --force)" >&2; exit 2 ;;
    esac
done
[[ "${GDF_SKIP_TORCH_CLUSTER:-0}" == "1" ]] && with_cluster=0

# Stamps record everything that decides each part of the environment: when they match, nothing runs.
stamp_key="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$TORCH_VERSION-$TORCHVISION_VERSION-$EXTRAS"
stamp="$VENV/.gdf-setup-stamp"
cluster_stamp="$VENV/.gdf-cluster-stamp"
core_done=0
[[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_key" && "$force" == 0 ]] && core_done=1
cluster_done=1
[[ "$with_cluster" == 1 && ! ( -f "$cluster_stamp" && "$(cat "$cluster_stamp")" == "$stamp_key-$CLUSTER_VERSION" ) ]] && cluster_done=0
[[ "$with_cluster" == 1 && "$force" == 1 ]] && cluster_done=0
if [[ "$core_done" == 1 && "$cluster_done" == 1 ]]; then
    exit 0
fi

log() { echo "[setup] $*" >&2; }

if [[ "$core_done" == 0 ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    $PIP install --quiet --upgrade pip setuptools wheel
    log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    $PIP install --quiet "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    log "installing gdf-pyg[$EXTRAS]"
    $PIP install --quiet -e ".[$EXTRAS]"
    rm -f "$cluster_stamp"  # a new torch needs its own torch-cluster build
    echo "$stamp_key" > "$stamp"
    cluster_done=$(( with_cluster == 1 ? 0 : 1 ))
fi

if [[ "$cluster_done" == 0 ]]; then
    # The wheel is specific to the torch it was compiled against: one cache folder per torch build.
    torch_tag="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
    py_tag="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    cache_dir="$WHEEL_CACHE/torch-$torch_tag-$py_tag"
    mkdir -p "$cache_dir"
    wheel="$(ls "$cache_dir"/torch_cluster-"$CLUSTER_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$wheel" ]]; then
        log "compiling torch-cluster==$CLUSTER_VERSION against torch $torch_tag (several minutes, done once; cached in $cache_dir)"
        build_dir="$(mktemp -d)"
        # --no-build-isolation: build against the torch installed above instead of downloading another.
        $PIP download --quiet --no-deps --no-binary :all: --no-build-isolation --dest "$build_dir" \
            "torch-cluster==$CLUSTER_VERSION"
        tar -xzf "$build_dir"/torch_cluster-"$CLUSTER_VERSION".tar.gz -C "$build_dir"
        src="$build_dir/torch_cluster-$CLUSTER_VERSION"
        # torch-cluster's setup.py turns ninja off, so sources compile one by one; setuptools'
        # build_ext can still build its separate extensions side by side (2x faster on 2 cores).
        printf '\n[build_ext]\nparallel = %s\n' "${MAX_JOBS:-$(nproc)}" >> "$src/setup.cfg"
        FORCE_ONLY_CPU="${FORCE_ONLY_CPU:-$("$VENV/bin/python" -c 'import torch; print(0 if torch.cuda.is_available() else 1)')}" \
            $PIP wheel --no-build-isolation --no-deps --wheel-dir "$build_dir" "$src"
        mv "$build_dir"/torch_cluster-*.whl "$cache_dir"/
        rm -rf "$build_dir"
        wheel="$(ls "$cache_dir"/torch_cluster-"$CLUSTER_VERSION"-*.whl | head -n 1)"
    else
        log "reusing cached $wheel"
    fi
    $PIP install --quiet --no-deps "$wheel"
    echo "$stamp_key-$CLUSTER_VERSION" > "$cluster_stamp"
fi
log "done: $VENV"
