#!/usr/bin/env bash
# The GPU check of docs/gpu.md, in two halves, so that the GPU machine needs no Rust:
#
#   xtask/gpu-check.sh prepare          here: builds the `cuda` binaries (nvcc from PyPI, link
#                                       stubs), xtask with and without cuDNN and the model's test
#                                       binary, into target/gpu-bundle.tar.xz (carry it to the GPU
#                                       machine; `run` unpacks it)
#   xtask/gpu-check.sh run [cuda|cpu]   there: runs the GPU tests, the benchmarks (ours and
#                                       PyTorch's) and a short training, and writes one JSON
#                                       ($OUT/gpu-check.json, or target/gpu-check.json without
#                                       $OUT); `cpu` tries the same path on the CPU (the GPU
#                                       tests then count as ignored)
#
# run's steps, each recorded in the JSON with its exit status and time:
#   0. gpu (cuda only): nvidia-smi must list a GPU, else run stops there and fails, loudly;
#   1. tests: the model's CUDA tests (src/ops/cuda_tests.rs: kernels against the CPU, the network
#      against PyTorch's fixture, a training step that stays on the GPU), from the prebuilt test
#      binary, with --ignored (without them on the CPU: listed as ignored, counted as skipped);
#   2. bench: `xtask bench --device <device> --fast-only --profile` at each batch (32 and 128), with
#      the plain binary (candle's convolutions), with it and our cuDNN convolutions switched on
#      (DEXPRESSION_CUDA_CONV=cudnn, TF32 as PyTorch's default, and =cudnn-strict, fp32 only:
#      bench.xtask+cudnn and bench.xtask+cudnn-strict), and with the binary built with candle's
#      `cudnn` feature (the per-layer profile times conv2b/conv3b alone and with their pool);
#   3. torch: xtask/gpu_bench_torch.py, training and inference images/s and batch-1 latency at the
#      same batches, fp32 eager with cuDNN benchmark mode (TF32 allowed, PyTorch's default), fp32
#      with allow_tf32 = False, then bf16 autocast (needs torch, and torch_dexpression.py in the
#      bundle); the JSON's `ratios` divide our images/s by PyTorch's in the same mode (strict for
#      xtask+cudnn-strict, else PyTorch's default), and `targets` checks issue 23's targets;
#   4. train: `xtask synth` then `xtask train --folds 5 --epochs 5` at 224 px on that device, each
#      epoch's seconds from history.jsonl, with candle's convolutions and again with ours
#      (train-cudnn: the accuracy must stay in the same range).
# run exits 1 when any step failed (after writing the JSON).
#
# Environment: CUDA_COMPUTE_CAP for prepare (default 90, the H200); GPU_CHECK_BATCHES ("32 128"),
# GPU_CHECK_BENCH_ITERATIONS (20) and GPU_CHECK_BENCH_IMAGE_SIZE (224) for steps 2 and 3;
# GPU_CHECK_SUBJECTS (20), GPU_CHECK_EPOCHS (5) and GPU_CHECK_IMAGE_SIZE (224) for step 4 (all
# smaller to try it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=target/gpu-bundle
mode="${1:-}"

prepare() {
    eval "$(.ci/cuda-toolchain.sh)"
    # One target directory per compute capability (see docs/gpu.md), unless one is chosen.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-sm$CUDA_COMPUTE_CAP}"
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE"
    # cuDNN first: both builds write target/release/xtask, and the last must be the plain one.
    cargo build --release -p xtask --features cudnn
    cp "$CARGO_TARGET_DIR/release/xtask" "$BUNDLE/xtask-cudnn"
    cargo build --release -p xtask --features cuda
    # The test binaries: the kernels' CUDA tests (their lib tests) and the network's (tests/cuda.rs).
    test_binary() { # package, cargo target selector, target name
        cargo test --release -p "$1" --features cuda $2 --no-run --message-format=json |
            python3 -c 'import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == sys.argv[1]:
        print(msg["executable"])' "$3"
    }
    cp "$(test_binary dexpression-kernels --lib dexpression_kernels)" "$BUNDLE/kernel-tests"
    cp "$(test_binary dexpression-model "--test cuda" cuda)" "$BUNDLE/model-tests"
    cp "$CARGO_TARGET_DIR/release/xtask" "$BUNDLE/xtask"
    strip "$BUNDLE/xtask" "$BUNDLE/xtask-cudnn" "$BUNDLE/model-tests" "$BUNDLE/kernel-tests"
    local anchors=../shared/anchors
    if [[ -f "$anchors/torch_dexpression.py" ]]; then
        cp "$anchors/torch_dexpression.py" "$BUNDLE/"
    else
        echo "gpu-check: no $anchors/torch_dexpression.py: the PyTorch step will be skipped" >&2
    fi
    {
        echo "compute_cap=$CUDA_COMPUTE_CAP"
        # The commit the binaries were built from, for the JSON (the GPU machine has no .git).
        echo "commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
    } >"$BUNDLE/BUILD"
    du -sh "$BUNDLE"/* >&2
    # The binaries are mostly candle's PTX and compress about sixfold: about 29 MiB for all three,
    # under the 64 MiB that a carry to the GPU machine allows.
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
    [[ -x "$BUNDLE/xtask" && -x "$BUNDLE/model-tests" && -x "$BUNDLE/kernel-tests" ]] ||
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

    if [[ "$device" != cpu ]]; then
        step gpu nvidia-smi -L
        if ! grep -q '^GPU ' "$out/gpu-check-gpu.log"; then
            echo "gpu-check: ERROR: no GPU found (nvidia-smi -L: $(head -c 300 "$out/gpu-check-gpu.log"))." >&2
            echo "gpu-check: ERROR: \`run $device\` needs one; \`run cpu\` tries the script without." >&2
            report "$work" "$device" "$out"
            exit 1
        fi
    fi
    # The prebuilt test binary finds the PyTorch fixture in this checkout.
    export CARGO_MANIFEST_DIR="$PWD/crates/model"
    if [[ "$device" == cpu ]]; then
        # No GPU: the CUDA tests must be listed as ignored, not run.
        step tests bash -c "'$BUNDLE/kernel-tests' cuda_ && '$BUNDLE/model-tests' cuda_"
    else
        step tests bash -c "'$BUNDLE/kernel-tests' --ignored --test-threads 1 cuda_ && '$BUNDLE/model-tests' --ignored --test-threads 1 cuda_"
    fi
    local batches="${GPU_CHECK_BATCHES:-32 128}"
    local bench_size="${GPU_CHECK_BENCH_IMAGE_SIZE:-224}"
    local bench_iterations="${GPU_CHECK_BENCH_ITERATIONS:-20}"
    mkdir -p "$work/bench"
    local binary batch
    for binary in xtask xtask-cudnn; do
        [[ -x "$BUNDLE/$binary" ]] || continue
        for batch in $batches; do
            step "bench-$binary-$batch" sh -c "'$BUNDLE/$binary' bench --device '$device' --fast-only --profile \
                --batch-size $batch --image-size $bench_size --iterations $bench_iterations \
                > '$work/bench/$binary-$batch.json'"
        done
    done
    # Our cuDNN convolutions (crates/kernels/src/cudnn_conv.rs), off by default, switched on
    # through the environment, in both math modes.
    local conv
    for conv in cudnn cudnn-strict; do
        for batch in $batches; do
            DEXPRESSION_CUDA_CONV="$conv" step "bench-xtask+$conv-$batch" sh -c "'$BUNDLE/xtask' bench \
                --device '$device' --fast-only --profile --batch-size $batch --image-size $bench_size \
                --iterations $bench_iterations > '$work/bench/xtask+$conv-$batch.json'"
        done
    done
    if [[ -f "$BUNDLE/torch_dexpression.py" ]]; then
        # shellcheck disable=SC2086 # the batches are separate arguments
        BENCH_STEPS="$bench_iterations" step torch sh -c \
            "python3 xtask/gpu_bench_torch.py --anchors '$BUNDLE' --device '$device' --image-size $bench_size --batch $batches > '$work/torch.json'"
    fi
    step synth "$BUNDLE/xtask" synth --out "$work/ck" --subjects "${GPU_CHECK_SUBJECTS:-20}"
    step train "$BUNDLE/xtask" train --source "$work/ck" --cache "$work/cache" \
        --out "$work/results" --device "$device" --folds 5 --epochs "${GPU_CHECK_EPOCHS:-5}" \
        --image-size "${GPU_CHECK_IMAGE_SIZE:-224}" --quiet
    DEXPRESSION_CUDA_CONV=cudnn step train-cudnn "$BUNDLE/xtask" train --source "$work/ck" \
        --cache "$work/cache" --out "$work/results-cudnn" --device "$device" --folds 5 \
        --epochs "${GPU_CHECK_EPOCHS:-5}" --image-size "${GPU_CHECK_IMAGE_SIZE:-224}" --quiet

    report "$work" "$device" "$out"
    if python3 -c 'import json, sys
sys.exit(any(s["status"] != 0 for s in map(json.loads, open(sys.argv[1]))))' "$steps"; then
        echo "gpu-check: every step passed" >&2
    else
        echo "gpu-check: ERROR: a step failed (see \"steps\" in the JSON and $out/gpu-check-*.log)" >&2
        exit 1
    fi
}

# The one JSON of a run: the steps, the tests' results, both benchmarks and their ratios, the
# training epochs.
report() {
    python3 - "$1" "$2" "$3" <<'PY'
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
def epochs_of(results):
    return [{"fold": e.get("fold"), "epoch": e.get("epoch"), "seconds": e.get("seconds"),
             "train_loss": (e.get("train") or {}).get("loss"),
             "test_accuracy": (e.get("test") or {}).get("accuracy")}
            for e in lines(os.path.join(work, results, "history.jsonl"))]
test_lines = [l for l in tail("tests", 200) if l.startswith("test ") or l.startswith("test result")]
# "test result: ok. 1 passed; 0 failed; 4 ignored; ...": ignored tests are skipped, not passed.
test_counts = {}
for l in test_lines:
    if l.startswith("test result"):
        for part in l.split(";"):
            words = part.replace(".", " ").split()
            for count, word in zip(words, words[1:]):
                if count.isdigit() and word in ("passed", "failed", "ignored"):
                    test_counts[word] = int(count)
torch = read_json(os.path.join(work, "torch.json"))
torch_runs = {(r.get("precision"), r["batch"]): r for r in (torch or {}).get("runs", [])}
build = {}
try:
    with open("target/gpu-bundle/BUILD") as f:
        build = dict(line.strip().split("=", 1) for line in f if "=" in line)
except OSError:
    pass
bench, ratios = {}, {}
bench_dir = os.path.join(work, "bench")
for name in sorted(os.listdir(bench_dir)) if os.path.isdir(bench_dir) else []:
    binary, batch = name[:-len(".json")].rsplit("-", 1)
    result = read_json(os.path.join(bench_dir, name))
    fast = (result or {}).get("fast")
    if not fast:
        continue
    summary = {
        "train_images_per_s": fast["train_images_per_s"]["median"],
        "eval_images_per_s": fast["eval_images_per_s"]["median"],
        "latency_ms_batch1": fast["latency_ms_batch1"]["median"],
        "train_ms_per_step": fast["train_ms_per_step"]["median"],
        "adam_ms": fast["adam_ms"]["median"],
        "train_host_round_trips": fast.get("train_host_round_trips"),
        "profile": result.get("profile"),
    }
    bench.setdefault(binary, {})[batch] = summary
    # Each mode against PyTorch in the same mode: strict fp32 against allow_tf32 = False.
    mode = "fp32-strict" if binary.endswith("cudnn-strict") else "fp32"
    theirs = torch_runs.get((mode, int(batch)))
    if theirs:
        ratio = {
            "torch_precision": mode,
            "train_over_torch": summary["train_images_per_s"] / theirs["train_images_per_s"],
            "eval_over_torch": summary["eval_images_per_s"] / theirs["eval_images_per_s"],
        }
        if theirs.get("latency_ms_batch1"):
            ratio["latency_over_torch"] = summary["latency_ms_batch1"] / theirs["latency_ms_batch1"]
        ratios.setdefault(binary, {})[batch] = ratio
# Issue 23's targets, per binary: training >= 1.2x PyTorch at batch 32 and >= 1.0x at 128,
# inference >= 1.5x at 32 and >= 1.0x at 128, batch-1 latency <= PyTorch's.
targets = {}
for binary, by_batch in ratios.items():
    checks = {}
    for batch, (train_min, eval_min) in {"32": (1.2, 1.5), "128": (1.0, 1.0)}.items():
        r = by_batch.get(batch)
        if r:
            checks[f"train_{batch}"] = r["train_over_torch"] >= train_min
            checks[f"eval_{batch}"] = r["eval_over_torch"] >= eval_min
            if "latency_over_torch" in r:
                checks[f"latency_{batch}"] = r["latency_over_torch"] <= 1.0
    targets[binary] = {"met": bool(checks) and all(checks.values()), "checks": checks}
report = {
    "device": device,
    "gpu": gpu,
    "build": build,
    "host": platform.node(),
    "steps": lines(os.path.join(work, "steps.jsonl")),
    "tests": test_counts,
    "tests_tail": test_lines,
    "bench": bench,
    "torch": torch,
    "ratios": ratios,
    "targets": targets,
    "train_epochs": epochs_of("results"),
    "train_epochs_cudnn": epochs_of("results-cudnn"),
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
