"""Fast exploration of the MiniLM / e5 + InfoNCE + projection model on Flickr8k, on emit's loop.

emit's own training loop (:mod:`emit.retrieval.train`: ``new_state``, ``prepare_tasks``,
``train_one_epoch``) and evaluation (``evaluate_embeddings``, the hubness bank and bias of
:mod:`emit.retrieval.hubness`), run on cached sentence embeddings and image features, so one
variant takes about 2 minutes on one thread. It chose the two changes in docs/retrieval.md (the
cosine schedule, MiniLM + e5); the library rows of benchmarks/retrieval_flickr8k.py are the
reported results. The variants beyond emit's settings are built on the loop's seams: AdamW for
--wd (the optimiser of ``new_state``), a learned temperature (the state's temperature, renewed
after every step), weight averaging (``on_step``), noise on the frozen embeddings (the encoder's
batch), a shared space of another width (the encoder's and the projection's width).

Split: retrieval_flickr8k.py's 1,000 reported images are left out; of the other 5,000, 10 %
(by sha256("val:<name>")) pick the epoch, scored by the mean of R@1/5/10 in both directions
without the correction ("best validation score" in the docs). The reported split's numbers are
printed as well, with and without the hubness correction (bank: the fitting images and up to
8,192 of their distinct texts, beta 10).

    python benchmarks/retrieval_flickr8k_explore.py --cache-dir /tmp/exp/rcache --text minilm+e5 \\
        --lr 5e-4 --cosine --epochs 6

The first run embeds the 30,000 captions with each sentence model into --cache-dir (e5 is the
slow one: many minutes on one thread). --seeds 0,1,2 averages the seeds' cosine scores (an ensemble).

Languages (--lang): ``en`` the English captions (Flickr8k.token.txt); ``zh`` the Chinese ones of
the same 6,000 images (Flickr8k-CN.token.txt, 5 each, written by native speakers), cached as
flickr8k-cn-captions-<model>.npy; ``both`` one model trained on both together. The image split is
the same for every language. Each language is scored on its own captions only (text -> image: its
captions are the queries; image -> text: its captions are the only candidates), with and without
the correction; the bank's texts are that language's fitting texts ("test_hubness"; with ``both``
also "test_hubness_mixed_bank": the texts of both). With ``both`` the epoch is picked by the mean
of the two languages' validation scores. "test_dedup" counts identical captions as one text
(evaluate_embeddings' ``texts``): short Chinese captions repeat across images.

    python benchmarks/retrieval_flickr8k_explore.py --cache-dir /tmp/exp/rcache --lang both --text e5 \\
        --lr 5e-4 --cosine --epochs 6 --out benchmarks/results/retrieval_flickr8k_lang.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BACKBONE = "efficientnet-lite0+efficientnet-lite2"
LITE0_DIM = 1280
BANK_BETA = 10.0
LANGS = ("en", "zh")
CN_TOKENS = "Flickr8k-CN.token.txt"  # beside Flickr8k.token.txt
CACHE_PREFIX = {"en": "flickr8k-captions", "zh": "flickr8k-cn-captions"}


def chinese_captions(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The Chinese captions of the bench's images (emit's Flickr8k reader, the same split file)
    and each one's image row in ``keys``."""
    from emit.data.captions import read_flickr8k
    from retrieval_flickr8k import DATA

    caps, problems = read_flickr8k(DATA / CN_TOKENS, DATA / "Flickr_8k.trainImages.txt")
    if len(problems):
        print(f"{CN_TOKENS}: {len(problems)} problems\n{problems.summary()}", flush=True)
    index = {k: j for j, k in enumerate(keys)}
    missing = sorted({c.image.name for c in caps} - index.keys())
    if missing:
        raise SystemExit(f"{CN_TOKENS}: {len(missing)} images not in the bench, e.g. {missing[:3]}")
    return [c.text for c in caps], np.array([index[c.image.name] for c in caps], dtype=np.int64)


def embeddings(cache_dir: Path, lang: str, name: str, texts: list[str]) -> np.ndarray:
    """The frozen sentence model ``name``'s embeddings of ``texts`` (one language's captions),
    cached as <prefix>-<name>.npy in ``cache_dir``."""
    from emit.retrieval.encoders.sentence import SENTENCE_MODELS

    path = cache_dir / f"{CACHE_PREFIX[lang]}-{name}.npy"
    if not path.is_file():
        model, parts, start = SENTENCE_MODELS[name](), [], time.perf_counter()
        for i in range(0, len(texts), 256):
            parts.append(model(texts[i:i + 256]).numpy())
            if i // 256 % 10 == 9:
                print(f"{name} {lang}: {i + 256}/{len(texts)} captions, {time.perf_counter() - start:.0f} s",
                      flush=True)
        np.save(path, np.concatenate(parts).astype(np.float32))
    emb = np.load(path)
    if emb.shape[0] != len(texts):
        raise SystemExit(f"{path}: {emb.shape[0]} rows for {len(texts)} captions; delete it")
    return emb


def load(cache_dir: Path, text: str, lang: str = "en", lite0: bool = False) -> dict[str, Any]:
    """Image features, caption rows, the test mask and the frozen text embeddings (as the
    encoder ``text`` computes them), each sentence model's cached as .npy; the captions of
    ``lang`` (en, zh or both: English then Chinese), each caption's language in ``lang``."""
    import torch

    from emit.retrieval.encoders.sentence import join_sentence_features
    from retrieval_flickr8k import load as load_bench

    bench = load_bench(cache_dir, BACKBONE)
    task = bench.tasks["titles"]
    captions = {"en": (list(task.texts), np.asarray(task.rows))}
    if lang != "en":
        captions["zh"] = chinese_captions(bench.keys)
    langs = LANGS if lang == "both" else (lang,)
    if lang == "both" and set(captions["en"][0]) & set(captions["zh"][0]):
        raise SystemExit("an English caption is also a Chinese one; the text cache would mix them")
    texts = [t for g in langs for t in captions[g][0]]
    parts = [torch.from_numpy(np.concatenate([embeddings(cache_dir, g, name, captions[g][0]) for g in langs]))
             for name in text.split("+")]
    # the composite's first 1,280 columns are Lite0's own features, bit for bit (checked), so
    # --lite0 measures the Lite0 image side from the same cache
    x = bench.features[:, :LITE0_DIM] if lite0 else bench.features
    return {"x": x, "rows": np.concatenate([captions[g][1] for g in langs]),
            "is_test": bench.is_test, "texts": texts, "keys": bench.keys,
            "lang": np.array([g for g in langs for _ in captions[g][0]]),
            "emb": join_sentence_features(parts).numpy()}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--text", default="minilm", help="minilm, e5 or minilm+e5")
    ap.add_argument("--lite0", action="store_true", help="Lite0's features alone (the backbone's first part)")
    ap.add_argument("--lang", default="en", choices=("en", "zh", "both"),
                    help="the captions: English, Chinese (Flickr8k-CN) or both in one model")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--dim", type=int, default=0, help="shared space width (0: the image dimension)")
    ap.add_argument("--temp", type=float, default=0.07)
    ap.add_argument("--learn-temp", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay (0: Adam)")
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cosine", action="store_true", help="lr decayed to 0 by a half cosine")
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian noise on the text embeddings")
    ap.add_argument("--ema", type=float, default=0.0, help="weight averaging decay per step (0: off)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval_flickr8k_explore.jsonl")
    return ap.parse_args(argv)


def recalls(text: np.ndarray, image: np.ndarray, caption_image: np.ndarray, bank: Any = None,
            texts: list[str] | None = None) -> dict[str, float]:
    """R@1/5/10 in both directions (``t``: text -> image, ``i``: image -> text) from emit's
    evaluation, each caption its own query (with ``texts``, identical captions count as one);
    with ``bank``, hubness-corrected both ways."""
    from emit.retrieval.evaluate import evaluate_embeddings
    from emit.retrieval.hubness import biases

    text_bias, image_bias = biases(text, image, bank, "both" if bank is not None else "none", beta=BANK_BETA,
                                   metric="ip")
    report = evaluate_embeddings(text, image, caption_image, metric="ip", ks=(1, 5, 10), texts=texts,
                                 text_bias=text_bias, image_bias=image_bias)
    return {f"{side}{k}": round(float(report[direction][f"R@{k}"]), 1)
            for k in (1, 5, 10) for side, direction in (("t", "text_to_image"), ("i", "image_to_text"))}


def main(argv: list[str] | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the variant of ``argv`` (the flags above); ``data`` replaces :func:`load` (a test's)."""
    a = arguments(argv)

    import torch
    from torch.nn import functional as F

    from emit.retrieval.config import RetrievalConfig
    from emit.retrieval.encoders.projection import ImageProjection
    from emit.retrieval.encoders.registry import build_encoder
    from emit.retrieval.hubness import HubnessBank, build_bank
    from emit.retrieval.model import RetrievalModel
    from emit.retrieval.pairs import Pairs
    from emit.retrieval.train import TrainState, new_state, prepare_tasks, train_one_epoch, training_features

    torch.set_num_threads(a.threads)
    d = data if data is not None else load(a.cache_dir, a.text, a.lang, a.lite0)
    x, rows, texts = np.asarray(d["x"], dtype=np.float32), np.asarray(d["rows"]), list(d["texts"])
    cap_lang = np.asarray(d["lang"]) if "lang" in d else np.full(len(texts), a.lang)
    langs = [g for g in LANGS if (cap_lang == g).any()]
    if not langs:
        raise SystemExit(f"no caption is in one of {LANGS}")
    train_img, test_img = np.flatnonzero(~d["is_test"]), np.flatnonzero(d["is_test"])
    frac = np.array([int(hashlib.sha256(f"val:{d['keys'][i]}".encode()).hexdigest()[:8], 16) / 2**32
                     for i in train_img])
    val_img, fit_img = train_img[frac < 0.1], train_img[frac >= 0.1]

    def caps_of(imgs: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(rows, imgs))

    fit, vcaps, tcaps = caps_of(fit_img), caps_of(val_img), caps_of(test_img)
    vlocal = np.searchsorted(val_img, rows[vcaps])
    vlang, tlang = cap_lang[vcaps], cap_lang[tcaps]
    fit_pairs = {"titles": Pairs([texts[i] for i in fit], rows[fit])}

    def train(seed: int) -> tuple[RetrievalModel, int, list[float]]:
        config = RetrievalConfig(
            encoder=a.text, loss="infonce", tasks="titles", normalise_images=True, image_projection=True,
            mlp_hidden=a.hidden, mlp_dropout=a.dropout, temperature=a.temp, lr=a.lr, batch_size=a.bs,
            epochs=a.epochs, lr_schedule="cosine" if a.cosine else "constant", beta1=0.9, beta2=0.999,
            grad_clip=0.0, val_fraction=0.0, seed=seed).validate()
        width = a.dim or x.shape[1]
        encoder = build_encoder(config, [], width)
        encoder.remember(texts, d["emb"])  # the cached frozen embeddings: the models never run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            projection = ImageProjection(x.shape[1], width)  # the identity when the widths match
        if a.noise:  # noise on the frozen embeddings while training, renormalised
            frozen = encoder.batch

            def noisy(batch_texts: list[str]) -> torch.Tensor:
                e = frozen(batch_texts)
                return F.normalize(e + a.noise * torch.randn_like(e), dim=1) if encoder.training else e

            encoder.batch = noisy  # type: ignore[method-assign]
        logt = torch.nn.Parameter(torch.tensor(math.log(a.temp)), requires_grad=a.learn_temp)
        extra = [logt] if a.learn_temp else []

        def optimiser(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            if a.wd:
                return torch.optim.AdamW(params + extra, lr=a.lr, weight_decay=a.wd)
            return torch.optim.Adam(params + extra, lr=a.lr, betas=(config.beta1, config.beta2))

        state = new_state(config, encoder, projection, margin=0.0, optimiser=optimiser,
                          temperature=logt.exp() if a.learn_temp else None)
        modules = [encoder, projection]
        ema = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules] if a.ema else None

        def after_step(s: TrainState) -> None:
            if a.learn_temp:
                s.temperature = logt.exp()  # a new graph for the next step
            if ema is not None:
                with torch.no_grad():
                    for avg, m in zip(ema, modules, strict=True):
                        for k, v in m.state_dict().items():
                            if v.is_floating_point():
                                avg[k].lerp_(v, 1 - a.ema)

        features, tasks = training_features(x, config), prepare_tasks(fit_pairs, config)
        best, best_state, best_epoch, history = -1.0, None, 0, []
        for epoch in range(a.epochs):
            train_one_epoch(state, features, tasks, epoch, on_step=after_step)
            live = None
            if ema is not None:  # score (and keep) the averaged weights
                live = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
                for avg, m in zip(ema, modules, strict=True):
                    m.load_state_dict(avg)
            model = state.model()
            vt, vi = model.text_vectors([texts[i] for i in vcaps]), model.image_vectors(x[val_img])
            score = float(np.mean([np.mean(list(recalls(vt[vlang == g], vi, vlocal[vlang == g]).values()))
                                   for g in langs]))  # with both languages, the mean of each's score
            history.append(round(score, 1))
            if score > best:
                best, best_epoch = score, epoch + 1
                best_state = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
            if live is not None:
                for saved, m in zip(live, modules, strict=True):
                    m.load_state_dict(saved)
        assert best_state is not None
        for saved, m in zip(best_state, modules, strict=True):
            m.load_state_dict(saved)
        state.eval()
        return state.model(), best_epoch, history

    start = time.perf_counter()
    tlocal = np.searchsorted(test_img, rows[tcaps])
    bank_texts = {g: [texts[j] for j in fit if cap_lang[j] == g] for g in langs}
    if len(langs) > 1:
        bank_texts["mixed"] = [texts[j] for j in fit]
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        model, best_epoch, history = train(seed)
        # the fitting images and texts (one bank per language, as each is scored on its own)
        banks = {g: build_bank(model, x, fit_img, bt) for g, bt in bank_texts.items()}
        runs.append((model.text_vectors([texts[i] for i in tcaps]), model.image_vectors(x[test_img]),
                     banks, best_epoch, history))
    k = len(runs)  # an ensemble: side-by-side unit vectors / sqrt(k) average the cosines

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, 1) / np.sqrt(k)

    t, i = join([r[0] for r in runs]), join([r[1] for r in runs])
    banks = {g: HubnessBank(join([r[2][g].images for r in runs]), join([r[2][g].texts for r in runs]),
                            runs[0][2][g].model_sha256 if k == 1 else "ensemble") for g in bank_texts}
    by_lang: dict[str, dict[str, Any]] = {}
    for g in langs:  # each language on its own captions: its queries, and i->t among its texts
        m = tlang == g
        scored = {"test": recalls(t[m], i, tlocal[m]), "test_hubness": recalls(t[m], i, tlocal[m], banks[g]),
                  "test_dedup": recalls(t[m], i, tlocal[m], texts=[texts[j] for j in tcaps[m]]),
                  "test_captions": int(m.sum())}
        if "mixed" in banks:
            scored["test_hubness_mixed_bank"] = recalls(t[m], i, tlocal[m], banks["mixed"])
        by_lang[g] = scored
    command = shlex.join(["python", "benchmarks/retrieval_flickr8k_explore.py",
                          *(sys.argv[1:] if argv is None else argv)])
    result = {"settings": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(a).items()},
              "command": command, "lang": a.lang, "loop": "emit.retrieval.train",
              "best_epochs": [r[3] for r in runs],
              "validation": [r[4] for r in runs], "best_validation": [max(r[4]) for r in runs],
              **({"test": by_lang[langs[0]]["test"], "test_hubness": by_lang[langs[0]]["test_hubness"]}
                 if len(langs) == 1 else {}),
              "by_lang": by_lang, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result), flush=True)
    with open(a.out, "a", encoding="utf-8") as fh:  # a log of variants, one JSON line each
        fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
