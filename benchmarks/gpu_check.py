"""Every check emit needs a GPU for, in one run (called by gpu_check.sh; prints one JSON line
per check and writes them all to --out).

1. extraction images/s with EfficientNet-Lite0: the forward pass alone (fp32 and autocast) and
   end to end through ``extract_features`` (decode included, no cache);
2. the largest difference between CPU and GPU features on 256 generated images (fp32 and
   autocast), as max |a - b|, max |a - b| / max |a|, and the smallest cosine;
3. retrieval training steps/s on the device (emit's own loop on generated embeddings);
4. the distributed training test on the GPU(s) (``torchrun`` over NCCL).

``--device cpu --small`` runs the same code on a CPU machine, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
results: list[dict[str, Any]] = []


def report(check: str, **values: Any) -> None:
    row = {"check": check, **values}
    results.append(row)
    print(json.dumps(row), flush=True)


def images(folder: Path, n: int) -> list[Path]:
    """``n`` generated garment photos (emit's synthetic products), as files."""
    from emit.data.synthetic import make_products

    make_products(folder, n_products=max(1, n // 2), seed=0)
    paths = sorted(p for p in folder.rglob("*.jpg"))
    if len(paths) < n:  # products have 2-4 images; repeat the last files' bytes under new names
        raise SystemExit(f"generated {len(paths)} images, wanted {n}")
    return paths[:n]


def forward_rate(backbone: Any, device: torch.device, autocast: bool, batch: int, steps: int) -> float:
    from emit.devices import inference_context

    model = backbone.model.to(device).eval()
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    with inference_context(device, autocast):
        model(x)  # warm-up: kernels chosen, memory allocated
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def extraction(paths: list[Path], device: torch.device, small: bool) -> None:
    from emit.vision.backbones import create_backbone
    from emit.vision.features import extract_features

    backbone = create_backbone("efficientnet-lite0")
    batch, steps = (8, 2) if small else (256, 20)
    for autocast in (False, True):
        rate = forward_rate(backbone, device, autocast, batch, steps)
        report("extract forward", device=str(device), autocast=autocast, batch=batch,
               images_per_s=round(rate, 1))
        start = time.perf_counter()
        _, ok = extract_features(paths, backbone, device=device, autocast=autocast, progress=False,
                                 num_threads=min(16, os.cpu_count() or 1), batch_size=64)
        seconds = time.perf_counter() - start
        report("extract end to end (decode included, no cache)", device=str(device), autocast=autocast,
               images=int(ok.sum()), images_per_s=round(len(paths) / seconds, 1))


def cpu_gpu_difference(paths: list[Path], device: torch.device) -> None:
    from emit.vision.backbones import create_backbone
    from emit.vision.features import extract_features

    torch.set_num_threads(min(16, os.cpu_count() or 1))
    cpu, _ = extract_features(paths, create_backbone("efficientnet-lite0"), device="cpu", progress=False)
    for autocast in (False, True):
        dev, _ = extract_features(paths, create_backbone("efficientnet-lite0"), device=device,
                                  autocast=autocast, progress=False)
        diff = np.abs(cpu - dev)
        cos = (cpu * dev).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(dev, axis=1)).clip(1e-12)
        report("CPU vs device features", device=str(device), autocast=autocast, images=len(paths),
               max_abs=float(diff.max()), max_rel=float(diff.max() / np.abs(cpu).max()),
               min_cosine=float(cos.min()))


def training_rate(device: torch.device, small: bool) -> None:
    """Steps/s of emit's retrieval loop on the device, on generated embeddings."""
    from emit.retrieval.train import benchmark_steps

    steps = 5 if small else 200
    rate = benchmark_steps(device=device, steps=steps, batch_size=512, image_dim=1280)
    report("retrieval training", device=str(device), batch=512, steps=steps, steps_per_s=round(rate, 2))


def finetune(device: torch.device, work: Path, small: bool) -> None:
    """`emit pair train --tune-full-model` on the device: one epoch of full fine-tuning of
    EfficientNet-Lite0 on generated products, then the heads."""
    from emit.data.synthetic import make_products

    data = make_products(work / "products", 8 if small else 40, seed=1)
    cmd = [sys.executable, "-m", "emit", "pair", "train", str(data), "--out", str(work / "tuned"), "-q",
           "--backbone", "efficientnet-lite0", "--tune-full-model", "--finetune-epochs", "1",
           "--min-count", "1", "--cache-dir", str(work / "cache-tune"), "--device", str(device)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=400)
    report("pair fine-tuning", device=str(device), ok=done.returncode == 0 and (work / "tuned" /
           "backbone.safetensors").is_file(), seconds=round(time.perf_counter() - start, 1),
           tail=(done.stdout + done.stderr).strip().splitlines()[-3:])


def distributed(device: torch.device, work: Path) -> None:
    """``torchrun -m emit retrieval train`` on every GPU here (NCCL; 1 GPU: one rank), killed
    after its first checkpoint and run again to resume; then the 2-process gloo tests (the
    collectives' maths: equal to one process on the concatenated batch)."""
    from emit.data.synthetic import make_shapes

    data = make_shapes(work / "shapes", variants=4)
    ranks = max(1, torch.cuda.device_count()) if device.type == "cuda" else 2
    out = work / "ddp-run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "emit", "retrieval", "train", "-q", "--titles", str(data["titles"]), "--clicks",
           str(data["clicks"]), "--encoder", "lstm", "--lr-schedule", "constant",
           "--vectors", str(data["vectors"]), "--backbone", "efficientnet-lite0",
           "--epochs", "30", "--batch-size", str(16 * ranks), "--cache-dir", str(work / "cache"),
           "--out", str(out), "--device", device.type]
    start = time.perf_counter()
    first = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while first.poll() is None and not (out / "checkpoint.pt").exists() and time.perf_counter() - start < 240:
        time.sleep(0.2)
    killed = first.poll() is None
    if killed:
        first.terminate()
    first.wait(timeout=60)
    second = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    summary = (second.stdout.strip().splitlines() or [""])
    report("torchrun retrieval train", device=device.type, ranks=ranks, killed_after_checkpoint=killed,
           ok=second.returncode == 0 and (out / "retrieval.json").is_file(),
           seconds=round(time.perf_counter() - start, 1), tail=summary[-3:] + second.stderr.splitlines()[-3:])
    tests = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             str(HERE.parent / "tests" / "retrieval" / "test_distributed.py")]
    done = subprocess.run(tests, cwd=work, capture_output=True, text=True, timeout=300)
    report("distributed training tests (gloo, 2 processes)", ok=done.returncode == 0,
           tail=(done.stdout + done.stderr).strip().splitlines()[-3:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a few images and steps (a CPU smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.jsonl")
    ap.add_argument("--skip", default="",
                    help="comma-separated checks to skip: extract,diff,train,finetune,ddp")
    a = ap.parse_args()
    from emit.devices import describe, resolve_device

    device = resolve_device(a.device)
    skip = set(filter(None, a.skip.split(",")))
    report("environment", torch=torch.__version__, cuda=torch.version.cuda, **describe(device))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = images(work / "images", 32 if a.small else 1024)
        checks = {
            "extract": lambda: extraction(paths, device, a.small),
            "diff": lambda: cpu_gpu_difference(paths[: 16 if a.small else 256], device),
            "train": lambda: training_rate(device, a.small),
            "finetune": lambda: finetune(device, work, a.small),
            "ddp": lambda: distributed(device, work),
        }
        for name, run in checks.items():
            if name in skip:
                continue
            try:
                run()
            except Exception as exc:  # one failed check must not hide the others' figures
                report(name, error=f"{type(exc).__name__}: {exc}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return 1 if any("error" in r or r.get("ok") is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
