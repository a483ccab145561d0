#!/usr/bin/env bash
# Installs CUDA's compiler from PyPI into target/cuda/ and prints the environment that builds
# `--features cuda` with it:
#
#     eval "$(.ci/cuda-toolchain.sh)"       # then: cargo check -p xtask --features cuda
#
# No GPU and no system CUDA are needed. Idempotent: a complete install is reused (CI caches
# target/). Progress goes to stderr, the `export` lines to stdout.
#
# What it installs (about 270 MB):
# - nvcc, its front ends (nvidia-nvvm, nvidia-cuda-crt), the runtime headers and CCCL, pinned to
#   CUDA 13.0: the GPU machine's driver (580) runs CUDA 13.0, and a newer nvcc writes PTX that an
#   older driver cannot load;
# - link stubs: cudarc (candle's CUDA layer) links libcuda, libnvrtc, libcurand, libcublas,
#   libcublasLt and libcudart at build time, and libcudnn with the `cudnn` feature (libcudart is
#   in the wheels; the others are not). libcuda comes only with the driver, so, as the CUDA toolkit does
#   with its lib/stubs/libcuda.so, this builds stubs: shared libraries with the real sonames that
#   define every function cudarc declares, and do nothing. They only satisfy the linker; the binary
#   runs on the real libraries (the driver's libcuda.so.1; libcublas and friends from the CUDA
#   toolkit or PyTorch's wheels, see docs/gpu.md). Called by mistake, a stub returns an error.
#
# Environment: CUDA_COMPUTE_CAP (default 90, the H200) is passed through; DEXPRESSION_CUDA_DIR
# overrides the install directory (default target/cuda/13.0 in this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_SERIES=13.0
DIR="${DEXPRESSION_CUDA_DIR:-$PWD/target/cuda/$CUDA_SERIES}"
ROOT="$DIR/nvidia/cu13"
STUBS="$ROOT/lib/stubs"
DONE="$DIR/.complete"
# Bumped whenever the packages or the stubs change, so a cached install is redone.
RECIPE=5

log() { echo "cuda-toolchain: $*" >&2; }

if [[ -f "$DONE" && "$(cat "$DONE")" == "$RECIPE" ]]; then
    log "reusing $DIR"
else
    command -v python3 >/dev/null || { log "python3 with pip is needed (apt-get install python3-pip)"; exit 1; }
    command -v gcc >/dev/null || { log "gcc is needed for the link stubs and as nvcc's host compiler"; exit 1; }
    rm -rf "$DIR"
    mkdir -p "$DIR"
    log "installing nvcc $CUDA_SERIES from PyPI into $DIR"
    # One pip call: with --target, a second call would skip the shared nvidia/ directory.
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$DIR" \
        "nvidia-cuda-nvcc==$CUDA_SERIES.*" \
        "nvidia-nvvm==$CUDA_SERIES.*" \
        "nvidia-cuda-crt==$CUDA_SERIES.*" \
        "nvidia-cuda-runtime==$CUDA_SERIES.*" \
        "nvidia-cuda-cccl==$CUDA_SERIES.*" >&2
    "$ROOT/bin/nvcc" --version >&2

    # The functions cudarc declares, from the cudarc source cargo resolved for this workspace.
    cudarc_src="$(cargo metadata --format-version 1 --features xtask/cuda 2>/dev/null |
        python3 -c 'import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in packages if p["name"] == "cudarc"))')"
    [[ -d "$cudarc_src/src" ]] || { log "cudarc's source not found (run cargo fetch)"; exit 1; }
    log "link stubs from $cudarc_src"
    mkdir -p "$STUBS"
    # library, soname of CUDA 13's library, cudarc module that declares its functions
    while read -r lib soname module; do
        src="$STUBS/$lib.c"
        {
            echo "/* Link stub for $soname: every function cudarc declares, failing with 999"
            echo "   (CUDA_ERROR_UNKNOWN; an error in every CUDA library) should it ever be called. */"
            grep -ohE '^pub unsafe fn [A-Za-z0-9_]+\(' "$cudarc_src/src/$module/sys/mod.rs" |
                sed -E 's/^pub unsafe fn ([A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' | sort -u
        } >"$src"
        gcc -shared -fPIC -o "$STUBS/$soname" -Wl,-soname,"$soname" "$src"
        ln -sf "$soname" "$STUBS/$lib.so"
        rm "$src"
    done <<'LIBS'
libcuda libcuda.so.1 driver
libnvrtc libnvrtc.so.13 nvrtc
libcurand libcurand.so.10 curand
libcublas libcublas.so.13 cublas
libcublasLt libcublasLt.so.13 cublaslt
libcudnn libcudnn.so.9 cudnn
LIBS
    # libcudart is real (nvidia-cuda-runtime), but the wheel has no unversioned name to link by.
    ln -sf ../libcudart.so.13 "$STUBS/libcudart.so"
    echo "$RECIPE" >"$DONE"
    log "installed ($(du -sh "$DIR" | cut -f1))"
fi

cat <<ENV
export PATH="$ROOT/bin:\$PATH"
export CUDA_ROOT="$ROOT"
export CUDA_PATH="$ROOT"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
ENV
