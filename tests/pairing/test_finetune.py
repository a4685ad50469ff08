"""Full fine-tuning on a few drawn products: it trains, saves a loadable backbone, resumes."""

import json

import torch

from emit.cli import main
from emit.data.synthetic import make_products
from emit.pairing.finetune import CHECKPOINT, TUNED_FILE, TUNED_WORK


def test_tune_full_model_end_to_end(tmp_path):
    data = make_products(tmp_path / "train", 8, seed=3, size=64)
    before = torch.get_num_threads()
    args = ["pair", "train", str(data), "--out", str(tmp_path / "m"), "--cache-dir",
            str(tmp_path / "cache"), "-q", "--threads", "1", "--backbone",
            "efficientnet-lite0+colour-hist", "--tune-full-model", "--finetune-epochs", "1",
            "--bag-size", "1", "--max-epochs", "3", "--batch-size", "16", "--min-count", "1"]
    try:
        assert main(args) == 0
        tuned = tmp_path / "m" / TUNED_FILE
        assert tuned.is_file() and not (tmp_path / "m" / CHECKPOINT).exists()
        meta = json.loads((tmp_path / "m" / "model.json").read_text())
        # the model records the tuned weights, so predict must rebuild the same backbone
        assert TUNED_FILE in json.dumps(meta["backbone"])
        assert main(["pair", "predict", str(tmp_path / "m"), str(data), "--out",
                     str(tmp_path / "final.json"), "--cache-dir", str(tmp_path / "cache"),
                     "-q", "--threads", "1"]) == 0
        final = json.loads((tmp_path / "final.json").read_text())
        assert all(v for p in final.values() for e in p["imgs_tags"] for v in e.values())
    finally:
        torch.set_num_threads(before)


def test_finetune_resumes_from_checkpoint(tmp_path, monkeypatch):
    """A run killed after an epoch's checkpoint resumes with the next epoch, not from scratch."""
    import pytest

    from emit.config import PairingConfig
    from emit.data.products import read_products
    from emit.pairing import finetune
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    products, _ = read_products(make_products(tmp_path / "train", 4, seed=5, size=64))
    out = tmp_path / "run"
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1])

    def killed(*_a, **_k):
        raise RuntimeError("killed before the final save")

    config = PairingConfig(backbone="efficientnet-lite0", finetune_epochs=1, batch_size=8,
                           min_count=1)
    with monkeypatch.context() as m:
        m.setattr(finetune, "atomic_write_safetensors", killed)
        with pytest.raises(RuntimeError):
            finetune.finetune_backbone(products, create_backbone("efficientnet-lite0"), config,
                                       out, problems=ProblemLog(), progress=False)
    assert (out / CHECKPOINT).is_file() and not (out / TUNED_WORK).exists()
    per_epoch = len(steps)
    steps.clear()
    config.finetune_epochs = 2
    finetune.finetune_backbone(products, create_backbone("efficientnet-lite0"), config, out,
                               problems=ProblemLog(), progress=False)
    assert len(steps) == per_epoch, "only the second epoch runs after resuming"
    assert (out / TUNED_WORK).is_file() and not (out / CHECKPOINT).exists()
