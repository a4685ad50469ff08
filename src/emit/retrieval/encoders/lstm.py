"""``lstm``, the paper's text encoder (Aggarwal et al. 2019).

Word vectors (GloVe 6B-50d by default, from :func:`emit.text.vectors.load_glove_package`) ->
a stacked LSTM over packed sequences -> the top layer's last hidden state -> a linear layer to
``out_dim``. The vocabulary is built from the training texts (:class:`Vocabulary`): a token is
kept if it has a pretrained vector or is seen at least ``min_count`` times; others map to the
UNK row. Rows without a pretrained vector (UNK and kept rare words) are random and trainable
(``build_embedding``). Saved with its vocabulary, ``text_vocab.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from emit.files import atomic_write_json, read_json
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders.base import DEFAULT_OUT_DIM, ENCODER_FILE, TextEncoder
from emit.retrieval.encoders.registry import register_text_encoder
from emit.text.tokenize import LANGS, content_words, tokenize
from emit.text.vectors import (
    RowGradMask,
    WordVectors,
    build_embedding,
    load_fasttext_bin,
    load_fasttext_vec,
    load_glove_package,
    load_glove_txt,
)

VOCAB_FILE = "text_vocab.json"
PAD, UNK = "<pad>", "<unk>"
_LSTM_SETTINGS = ("vectors", "min_count", "trainable_oov", "freeze_known", "seed")


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


# --------------------------------------------------------------------------- the encoder


def _row_trainability(emb: nn.Embedding, pretrained: np.ndarray, trainable_oov: bool,
                      freeze_known: bool) -> None:
    """Re-apply ``build_embedding``'s rule to a loaded embedding: which rows get gradients."""
    trainable = np.where(pretrained, not freeze_known, trainable_oov)
    trainable[0] = False  # PAD
    if not trainable.any():
        emb.weight.requires_grad_(False)
    elif not trainable[1:].all():
        emb.weight.register_hook(RowGradMask(trainable))


@register_text_encoder("lstm")
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

    @classmethod
    def create(cls, texts: Iterable[str] | None = None, out_dim: int = DEFAULT_OUT_DIM, *,
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
            return cls(vocab, emb, out_dim, hidden=hidden, num_layers=num_layers, dropout=dropout,
                       max_tokens=max_tokens, settings=settings)

    @classmethod
    def from_config(cls, config: RetrievalConfig, texts: Sequence[str], out_dim: int, *,
                    vectors: WordVectors | None = None) -> LSTMTextEncoder:
        """``config``'s vectors (unless ``vectors`` are given), hidden, num_layers, dropout,
        min_count, max_tokens and seed."""
        vecs = vectors if vectors is not None else load_vectors(config.vectors)
        return cls.create(texts=texts, out_dim=out_dim, vectors=vecs, hidden=config.hidden,
                          num_layers=config.num_layers, dropout=config.dropout, min_count=config.min_count,
                          max_tokens=config.max_tokens, seed=config.seed)

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


def load_vectors(spec: str | os.PathLike[str] | None) -> WordVectors | None:
    """Word vectors named by the configuration: None = the GloVe 6B-50d package (loaded by the
    encoder); a ``.bin`` fastText model, a ``.vec`` fastText text file, or a GloVe text file."""
    if spec is None or str(spec) == "":
        return None
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return load_fasttext_bin(path)
    if suffix == ".vec":
        return load_fasttext_vec(path)
    return load_glove_txt(path)


def _vectors_name(vectors: WordVectors) -> str:
    """The vectors' source without folders (the installed path is no part of the identity)."""
    source = vectors.source or "word vectors"
    return source.split(" (", 1)[0] if " (" in source else os.path.basename(source)
