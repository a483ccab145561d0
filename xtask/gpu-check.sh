#!/usr/bin/env bash
# The GPU check of docs/gpu.md, in two halves, so that the GPU machine needs no Rust:
#
#   xtask/gpu-check.sh prepare          here: builds the `cuda` binaries (nvcc from PyPI, link
#                                       stubs) into target/gpu-bundle.tar.xz (carry it to the GPU
#                                       machine; `run` unpacks it)
#   xtask/gpu-check.sh run [cuda|cpu]   there: runs the GPU tests, PyTorch's figures and a short
#                                       training, and writes one JSON ($OUT/gpu-check.json, or
#                                       target/gpu-check.json without $OUT); `cpu` tries the same
#                                       path on the CPU (the GPU tests then count as ignored)
#
# run's steps, each recorded in the JSON with its exit status and time:
#   1. tests: the model's CUDA tests (src/ops/cuda_tests.rs: kernels against the CPU, the network
#      against PyTorch's fixture), from the prebuilt test binary, with --ignored;
#   2. torch: xtask/gpu_bench_torch.py, training and inference images/s at batch 32 and 128, fp32
#      eager with cuDNN benchmark mode, then bf16 autocast (needs torch, and torch_dexpression.py in
#      the bundle);
#   3. train: `xtask synth` then `xtask train --folds 5 --epochs 5` at 224 px on that device, each
#      epoch's seconds from history.jsonl.
# `cargo xtask bench` times the CPU only (it has no --device), so the network's own GPU images/s
# come from the training epochs here; see docs/gpu.md.
#
# Environment: CUDA_COMPUTE_CAP for prepare (default 90, the H200); GPU_CHECK_SUBJECTS (default 20),
# GPU_CHECK_EPOCHS (5) and GPU_CHECK_IMAGE_SIZE (224) for step 3 (smaller to try it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=target/gpu-bundle
mode="${1:-}"

prepare() {
    eval "$(.ci/cuda-toolchain.sh)"
    # One target directory per compute capability (see docs/gpu.md), unless one is chosen.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-sm$CUDA_COMPUTE_CAP}"
    cargo build --release -p xtask --features cuda
    local tests
    tests="$(cargo test --release -p dexpression-model --features cuda --lib --no-run \
        --message-format=json | python3 -c 'import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "dexpression_model":
        print(msg["executable"])')"
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE"
    cp "$CARGO_TARGET_DIR/release/xtask" "$BUNDLE/xtask"
    cp "$tests" "$BUNDLE/model-tests"
    strip "$BUNDLE/xtask" "$BUNDLE/model-tests"
    local anchors=../shared/anchors
    if [[ -f "$anchors/torch_dexpression.py" ]]; then
        cp "$anchors/torch_dexpression.py" "$BUNDLE/"
    else
        echo "gpu-check: no $anchors/torch_dexpression.py: the PyTorch step will be skipped" >&2
    fi
    echo "compute_cap=$CUDA_COMPUTE_CAP" >"$BUNDLE/BUILD"
    du -sh "$BUNDLE"/* >&2
    # The binaries are mostly candle's PTX and compress about sevenfold: under the 64 MiB that a
    # carry to the GPU machine allows.
    tar -C "$(dirname "$BUNDLE")" -cf - "$(basename "$BUNDLE")" | xz -T0 -3 >"$BUNDLE.tar.xz"
    du -sh "$BUNDLE.tar.xz" >&2
    echo "gpu-check: carry $BUNDLE.tar.xz and run there: xtask/gpu-check.sh run cuda" >&2
}

# The directories of the CUDA libraries in the Python environment's NVIDIA wheels (PyTorch's
# cublas, curand, nvrtc), for the binaries linked against the stubs.
nvidia_library_path() {
    python3 - <<'PY' 2>/dev/null || true
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
PY
}

run() {
    local device="${1:-cuda}"
    local out="${OUT:-target}"
    local work
    work="$(mktemp -d)"
    mkdir -p "$out"
    if [[ ! -x "$BUNDLE/xtask" && -f "$BUNDLE.tar.xz" ]]; then
        python3 -m tarfile -e "$BUNDLE.tar.xz" "$(dirname "$BUNDLE")"
    fi
    [[ -x "$BUNDLE/xtask" && -x "$BUNDLE/model-tests" ]] ||
        { echo "gpu-check: no $BUNDLE; run \`xtask/gpu-check.sh prepare\` first" >&2; exit 1; }
    local libs
    libs="$(nvidia_library_path)"
    if [[ "$device" == cpu && -d target/cuda/13.0/nvidia/cu13/lib/stubs ]]; then
        # Trying the CPU path where no CUDA library is installed: the link stubs let the binaries
        # load (nothing calls them on the CPU).
        libs="${libs:+$libs:}$PWD/target/cuda/13.0/nvidia/cu13/lib/stubs:$PWD/target/cuda/13.0/nvidia/cu13/lib"
    fi
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local steps="$work/steps.jsonl"
    : >"$steps"
    step() { # name, command...: runs it, logging to $out/gpu-check-<name>.log
        local name="$1"
        shift
        local start status
        start="$(date +%s.%N)"
        set +e
        "$@" >"$out/gpu-check-$name.log" 2>&1
        status=$?
        set -e
        python3 -c 'import json, sys, time
print(json.dumps({"step": sys.argv[1], "status": int(sys.argv[2]), "seconds": round(time.time() - float(sys.argv[3]), 1)}))' \
            "$name" "$status" "$start" >>"$steps"
        echo "gpu-check: $name exited $status" >&2
    }

    if [[ "$device" == cpu ]]; then
        # No GPU: the CUDA tests must be listed as ignored, not run.
        step tests "$BUNDLE/model-tests" cuda_
    else
        step tests "$BUNDLE/model-tests" --ignored --test-threads 1 cuda_
    fi
    if [[ -f "$BUNDLE/torch_dexpression.py" ]]; then
        BENCH_STEPS="${BENCH_STEPS:-20}" step torch sh -c \
            "python3 xtask/gpu_bench_torch.py --anchors '$BUNDLE' --device '$device' --batch 32 128 > '$work/torch.json'"
    fi
    step synth "$BUNDLE/xtask" synth --out "$work/ck" --subjects "${GPU_CHECK_SUBJECTS:-20}"
    step train "$BUNDLE/xtask" train --source "$work/ck" --cache "$work/cache" \
        --out "$work/results" --device "$device" --folds 5 --epochs "${GPU_CHECK_EPOCHS:-5}" \
        --image-size "${GPU_CHECK_IMAGE_SIZE:-224}" --quiet

    python3 - "$work" "$device" "$out" <<'PY'
import json, os, platform, subprocess, sys
work, device, out = sys.argv[1:4]
def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return []
def tail(name, n=25):
    try:
        with open(os.path.join(out, f"gpu-check-{name}.log")) as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except OSError:
    gpu = None
epochs = lines(os.path.join(work, "results", "history.jsonl"))
report = {
    "device": device,
    "gpu": gpu,
    "host": platform.node(),
    "steps": lines(os.path.join(work, "steps.jsonl")),
    "tests_tail": [l for l in tail("tests", 200) if l.startswith("test ") or l.startswith("test result")],
    "torch": read_json(os.path.join(work, "torch.json")),
    "train_epochs": [{"fold": e.get("fold"), "epoch": e.get("epoch"), "seconds": e.get("seconds"),
                      "train_loss": (e.get("train") or {}).get("loss"),
                      "test_accuracy": (e.get("test") or {}).get("accuracy")} for e in epochs],
    "train_tail": tail("train"),
}
path = os.path.join(out, "gpu-check.json")
with open(path, "w") as f:
    json.dump(report, f, indent=1)
print(path)
PY
}

case "$mode" in
prepare) prepare ;;
run) run "${2:-cuda}" ;;
*)
    echo "usage: xtask/gpu-check.sh prepare | run [cuda|cpu]" >&2
    exit 2
    ;;
esac
