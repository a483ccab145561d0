"""PyTorch's figures for the DeXpression CNN on a CUDA GPU, for xtask/gpu-check.sh.

fp32, eager, cuDNN with torch.backends.cudnn.benchmark = True (TF32 allowed, PyTorch's default), then
with allow_tf32 = False (fp32-strict), then the same under bf16 autocast
(reported separately). Training step: forward, NLL loss, backward, Adam step, as
`cargo xtask bench` times it; inference: eval-mode forward. Each timing is the median of
BENCH_STEPS (default 20) steps after 3 warm-up steps, synchronised with the GPU.

Run:  python3 xtask/gpu_bench_torch.py --anchors DIR [--batch 32 128]
      (DIR holds torch_dexpression.py, the PyTorch port's network: ../shared/anchors)
Prints one JSON object on stdout.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchors", required=True, help="folder with torch_dexpression.py")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.anchors))
    import torch
    import torch.nn as nn
    from torch_dexpression import DeXpression

    steps = int(os.environ.get("BENCH_STEPS", "20"))
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def median_seconds(step, warmup=3):
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    result = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "image_size": args.image_size,
        "steps": steps,
        "runs": [],
    }
    # fp32: PyTorch's defaults (cuDNN convolutions may use TF32, allow_tf32 = True); fp32-strict:
    # allow_tf32 = False (fp32 arithmetic only), the mode our `cudnn-strict` convolution compares
    # with; bf16-autocast: reported separately.
    for mode in ["fp32", "fp32-strict", "bf16-autocast"]:
        autocast = torch.bfloat16 if mode == "bf16-autocast" else None
        torch.backends.cudnn.allow_tf32 = mode != "fp32-strict"
        for batch in args.batch:
            torch.manual_seed(0)
            model = DeXpression().to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            loss_fn = nn.NLLLoss()
            xs = torch.rand(batch, 1, args.image_size, args.image_size, device=device)
            ys = torch.randint(0, 7, (batch,), device=device)
            enabled = autocast is not None

            def precision():
                if enabled:
                    return torch.autocast(device.type, dtype=autocast)
                return contextlib.nullcontext()

            def train_step():
                opt.zero_grad(set_to_none=True)
                with precision():
                    loss = loss_fn(model(xs).float(), ys)
                loss.backward()
                opt.step()

            def eval_step():
                with torch.inference_mode(), precision():
                    model(xs)

            one = xs[:1]

            def latency_step():
                with torch.inference_mode(), precision():
                    model(one)

            model.train()
            train = median_seconds(train_step)
            model.eval()
            infer = median_seconds(eval_step)
            latency = median_seconds(latency_step)
            run = {
                "precision": mode,
                "latency_ms_batch1": latency * 1e3,
                "batch": batch,
                "train_images_per_s": batch / train,
                "train_ms_per_step": train * 1e3,
                "eval_images_per_s": batch / infer,
                "eval_ms_per_batch": infer * 1e3,
            }
            print(json.dumps(run), file=sys.stderr, flush=True)
            result["runs"].append(run)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
