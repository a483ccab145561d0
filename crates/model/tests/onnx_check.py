"""Check models written by `cargo xtask export` with onnx.checker and ONNX Runtime (run by .ci/run).

Needs onnx, onnxruntime, numpy and pillow (CI installs them in a virtual environment under target/).
Subcommands:

  inputs MODEL DIR [--count 16] [--seed 1]
      Writes DIR/input-00.png ... : random 8-bit grayscale images at the model's input side, so that
      no resize stands between our preprocessing and this script's (pixel / 255 exactly).
  check MODEL --inputs DIR --ours JSONL
      onnx.checker (full check), the operators (the port's or the paper variant's, as the weights'
      metadata names it), the metadata, then ONNX Runtime on the images at batch 1 (each alone)
      and at batch N (all at once) against `cargo xtask predict --no-crop --json` on the same images
      (JSONL), within 1e-4; and log_probabilities against the log of probabilities.
  port MODEL --reference SAFETENSORS
      The PyTorch port's checkpoint, imported and exported: ONNX Runtime on the fixture's `x` against
      PyTorch's `eval.logp`, within 1e-4, at batch 1 and the whole batch.
  snippet MODEL IMAGE --doc docs/deploy.md --expect LABEL
      Runs the first ```python block of the doc (MODEL and IMAGE as its arguments) and checks that it
      names LABEL first.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

TOLERANCE = 1e-4


def fail(message):
    print(f"onnx_check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def session(model):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def metadata(model):
    return {entry.key: entry.value for entry in onnx.load(model).metadata_props}


def side_of(model):
    return int(metadata(model)["dexpression.input_side"])


def read_png(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def run(sess, batch):
    log_probabilities, probabilities = sess.run(
        ["log_probabilities", "probabilities"], {"input": batch.astype(np.float32)}
    )
    return log_probabilities, probabilities


def compare(what, theirs, ours):
    theirs, ours = np.asarray(theirs, dtype=np.float64), np.asarray(ours, dtype=np.float64)
    if theirs.shape != ours.shape:
        fail(f"{what}: shape {theirs.shape} vs ours {ours.shape}")
    worst = float(np.max(np.abs(theirs - ours)))
    if not worst <= TOLERANCE:
        fail(f"{what}: largest difference {worst:.3g} exceeds {TOLERANCE}")
    print(f"{what}: largest difference {worst:.2g} (<= {TOLERANCE})")


def cmd_inputs(args):
    side = side_of(args.model)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.dir, exist_ok=True)
    for index in range(args.count):
        pixels = rng.integers(0, 256, size=(side, side), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(os.path.join(args.dir, f"input-{index:02}.png"))
    print(f"wrote {args.count} images of {side}x{side} to {args.dir}")


def cmd_check(args):
    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    ops = {node.op_type for node in model.graph.node}
    print(f"{args.model}: onnx.checker passed (opset {opset}, IR {model.ir_version})")
    meta = {entry.key: entry.value for entry in model.metadata_props}
    # The paper variant (its weights' metadata says so) has an LRN node and no BatchNorm; the
    # port's a LayerNormalization node from opset 17 on, its decomposition below.
    if meta.get("safetensors.variant", "port") == "paper":
        if "LRN" not in ops or ops & {"LayerNormalization", "BatchNormalization"}:
            fail(f"a paper network with operators {sorted(ops)}")
    elif ("LayerNormalization" in ops) != (opset >= 17):
        fail(f"opset {opset} with operators {sorted(ops)}")
    classes = json.loads(meta["dexpression.class_names"])
    side = int(meta["dexpression.input_side"])
    if len(classes) != int(meta["dexpression.n_classes"]):
        fail("dexpression.class_names and dexpression.n_classes disagree")
    preprocessing = json.loads(meta["dexpression.preprocessing"])
    if preprocessing["side"] != side or preprocessing["divide_by"] != 255:
        fail(f"preprocessing {preprocessing} for side {side}")

    ours = {}
    with open(args.ours) as lines:
        for line in lines:
            record = json.loads(line)
            ours[os.path.basename(record["path"])] = record
    names = sorted(name for name in os.listdir(args.inputs) if name.endswith(".png"))
    if not names or set(names) != set(ours):
        fail(f"{args.ours} covers {sorted(ours)}, the folder holds {names}")
    batch = np.stack([read_png(os.path.join(args.inputs, name)) for name in names])[:, None]
    expected = np.array([[ours[name]["probabilities"][c] for c in classes] for name in names])

    sess = session(args.model)
    shape = sess.get_inputs()[0].shape
    if shape[1:] != [1, side, side] or isinstance(shape[0], int):
        fail(f"input shape {shape}: expected a symbolic batch x 1 x {side} x {side}")
    single = [run(sess, batch[i : i + 1]) for i in range(len(names))]
    compare(
        f"ONNX Runtime at batch 1, {len(names)} images, vs predict",
        np.concatenate([p for _, p in single]),
        expected,
    )
    log_probabilities, probabilities = run(sess, batch)
    compare(f"ONNX Runtime at batch {len(names)} vs predict", probabilities, expected)
    compare("log_probabilities vs log(probabilities)", log_probabilities, np.log(probabilities))
    for name, row in zip(names, probabilities):
        if classes[int(np.argmax(row))] != ours[name]["label"]:
            # Only a near tie may flip the label; the values were within tolerance above.
            top = np.sort(row)[-2:]
            if top[1] - top[0] > TOLERANCE:
                fail(f"{name}: ONNX Runtime says {classes[int(np.argmax(row))]}, predict {ours[name]['label']}")


def read_safetensors(path):
    """The tensors of a safetensors file (its format: u64 header length, JSON header, raw data)."""
    with open(path, "rb") as file:
        data = file.read()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + length + start : 8 + length + end]
        tensors[name] = np.frombuffer(raw, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def cmd_port(args):
    onnx.checker.check_model(onnx.load(args.model), full_check=True)
    reference = read_safetensors(args.reference)
    x, expected = reference["x"], reference["eval.logp"]
    sess = session(args.model)
    single = np.concatenate([run(sess, x[i : i + 1])[0] for i in range(len(x))])
    compare(f"port checkpoint, ONNX Runtime at batch 1 vs PyTorch eval.logp", single, expected)
    whole, _ = run(sess, x)
    compare(f"port checkpoint, ONNX Runtime at batch {len(x)} vs PyTorch eval.logp", whole, expected)


def cmd_snippet(args):
    with open(args.doc) as file:
        blocks = re.findall(r"```python\n(.*?)```", file.read(), flags=re.S)
    if not blocks:
        fail(f"{args.doc} has no ```python block")
    script = os.path.join(os.path.dirname(os.path.abspath(args.model)), "deploy_snippet.py")
    with open(script, "w") as file:
        file.write(blocks[0])
    result = subprocess.run(
        [sys.executable, script, args.model, args.image], capture_output=True, text=True
    )
    if result.returncode != 0:
        fail(f"the snippet of {args.doc} failed:\n{result.stderr}")
    print(f"snippet of {args.doc}: {result.stdout.strip()}")
    if not result.stdout.startswith(args.expect):
        fail(f"the snippet names {result.stdout.split()[:1]}, predict {args.expect}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("model")
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("check")
    p.add_argument("model")
    p.add_argument("--inputs", required=True)
    p.add_argument("--ours", required=True)
    p = sub.add_parser("port")
    p.add_argument("model")
    p.add_argument("--reference", required=True)
    p = sub.add_parser("snippet")
    p.add_argument("model")
    p.add_argument("image")
    p.add_argument("--doc", required=True)
    p.add_argument("--expect", required=True)
    args = parser.parse_args()
    {"inputs": cmd_inputs, "check": cmd_check, "port": cmd_port, "snippet": cmd_snippet}[
        args.command
    ](args)


if __name__ == "__main__":
    main()
