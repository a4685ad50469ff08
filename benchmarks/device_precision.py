"""How much reduced precision moves image features: EfficientNet-Lite0 on 256 Flickr8k images,
fp32 against bf16 autocast, on the CPU (emit's CUDA path autocasts; the CPU path never does).

    python benchmarks/device_precision.py --images /path/to/flickr8k/images [--device cpu|cuda]

On the CPU this measures what bf16 rounding alone does to the features, a stand-in for a GPU
run where none is at hand; benchmarks/gpu_check.sh measures CPU against the real GPU. Prints
max |a - b|, max |a - b| / max |a|, the smallest cosine, and how often each image's nearest
neighbour among the 256 stays the same.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from emit.data.images import load_images_threaded
    from emit.devices import resolve_device
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    device = resolve_device(a.device)
    paths = sorted(a.images.glob("*.jpg"))[: a.n]
    backbone = create_backbone("efficientnet-lite0")
    model = backbone.model.to(device).eval()
    tensors = [t for t in load_images_threaded(paths, backbone.transform, 2, ProblemLog(), None)
               if t is not None]
    x = torch.stack(tensors).to(device)
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        start = time.perf_counter()
        with torch.inference_mode():
            if dtype is None:
                feats = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)])
            else:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    feats = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)])
        out[name] = feats.float().cpu().numpy()
        print(f"{name}: {len(x) / (time.perf_counter() - start):.1f} images/s", flush=True)
    a32, b16 = out["fp32"], out["bf16"]
    diff = np.abs(a32 - b16)
    cos = (a32 * b16).sum(1) / (np.linalg.norm(a32, axis=1) * np.linalg.norm(b16, axis=1))

    def nearest(f: np.ndarray) -> np.ndarray:
        u = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    print(json.dumps({"device": str(device), "images": len(x), "max_abs": float(diff.max()),
                      "max_rel": float(diff.max() / np.abs(a32).max()), "min_cosine": float(cos.min()),
                      "mean_cosine": float(cos.mean()),
                      "same_nearest_neighbour": float((nearest(a32) == nearest(b16)).mean())}))


if __name__ == "__main__":
    main()
