"""Retrieval evaluation against small cases computed by hand.

Images I0 = (0, 0), I1 = (10, 0), I2 = (0, 10); captions c0 = (1, 0) and c1 = (9, 0) of I0,
c2 = (0, 9.5) of I1, c3 = (0, 8) of I2. Squared distances (no ties):

         I0     I1      I2
    c0    1     81     101
    c1   81      1     181
    c2  90.25  190.25  0.25
    c3   64    164       4

text -> image ranks of the own image: c0 1, c1 2, c2 3, c3 1.
image -> text (rank of the best own caption): I0 1 (c0), I1 4 (c2 is last), I2 2 (c3 after c2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emit.data.captions import Caption
from emit.problems import EmitError
from emit.retrieval.distances import score_matrix
from emit.retrieval.evaluate import (
    evaluate_captions,
    evaluate_embeddings,
    format_evaluation,
    image_categories,
    write_evaluation,
)

IMAGES = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
TEXTS = np.array([[1, 0], [9, 0], [0, 9.5], [0, 8]], dtype=np.float32)
OF = [0, 0, 1, 2]
CATS = ["A", "A", "B", "A"]  # images: I0 A, I1 B, I2 A


def test_similarity_is_negative_squared_distance_or_inner_product() -> None:
    s = score_matrix(TEXTS, IMAGES, "l2")
    assert np.allclose(-s, [[1, 81, 101], [81, 1, 181], [90.25, 190.25, 0.25], [64, 164, 4]])
    assert np.allclose(score_matrix(TEXTS, IMAGES, "ip"), TEXTS @ IMAGES.T)
    with pytest.raises(EmitError, match="unknown metric"):
        score_matrix(TEXTS, IMAGES, "cos")


def test_recall_and_median_rank_in_both_directions() -> None:
    r = evaluate_embeddings(TEXTS, IMAGES, OF)
    t2i, i2t = r["text_to_image"], r["image_to_text"]
    assert (t2i["R@1"], t2i["R@5"], t2i["R@10"], t2i["R@20"]) == (50.0, 100.0, 100.0, 100.0)
    assert t2i["median_rank"] == 1.5  # ranks 1, 2, 3, 1
    assert i2t["R@1"] == pytest.approx(100 / 3) and i2t["median_rank"] == 2.0  # ranks 1, 4, 2
    assert r["counts"] == {"captions": 4, "images": 3, "images_with_captions": 3, "distinct_texts": 4}
    # the recall curve: R@K for K = 1..3 (as many as there are images)
    assert r["recall_curve"]["K"] == [1, 2, 3]
    assert r["recall_curve"]["text_to_image"] == [50.0, 75.0, 100.0]
    assert r["recall_curve"]["image_to_text"] == pytest.approx([100 / 3, 200 / 3, 200 / 3])


def test_image_to_text_hits_if_any_caption_is_in_the_top_k() -> None:
    # I0's first caption is its worst-ranked text; its second caption ranks first
    images = np.array([[0, 0], [5, 0]], dtype=np.float32)
    texts = np.array([[6, 0], [0.5, 0], [5, 0.1]], dtype=np.float32)  # c0 (of I0) sits on I1
    r = evaluate_embeddings(texts, images, [0, 0, 1])
    assert r["image_to_text"]["R@1"] == 100.0 and r["image_to_text"]["median_rank"] == 1.0
    assert r["text_to_image"]["R@1"] == pytest.approx(200 / 3)


def test_identical_texts_are_one_query_that_finds_any_of_their_images() -> None:
    # Captions 0 and 2 read the same ("Red  shirt" folds to "red shirt"); they describe I0 and I1.
    texts = ["red shirt", "blue shirt", "Red  shirt", "green hat"]
    of = [0, 1, 1, 2]
    vecs = np.array([[0, 9.0], [10, 0], [0, 9.0], [0, 10]], dtype=np.float32)
    # the shared text sits nearest I2, then I0, then I1: its best relevant image ranks 2
    r = evaluate_embeddings(vecs, IMAGES, of, texts=texts)
    assert r["counts"]["distinct_texts"] == 3
    t2i = r["text_to_image"]
    assert t2i["R@1"] == pytest.approx(200 / 3) and t2i["median_rank"] == 1.0  # ranks 2, 1, 1
    # I0's nearest texts tie (captions 0 and 2, same text): either copy is a hit
    i2t = r["image_to_text"]
    assert i2t["R@1"] == 100.0
    moved = vecs.copy()
    moved[0] = [0, 9.5]  # caption 0 now loses to its copy at index 2, which still counts for I0
    assert evaluate_embeddings(moved, IMAGES, of, texts=texts)["image_to_text"]["R@1"] == 100.0
    assert evaluate_embeddings(moved, IMAGES, of)["image_to_text"]["R@1"] == pytest.approx(200 / 3)
    # image relevance for mAP: the same sets as R@K (query: shared text -> I0 and I1)
    assert r["map"]["text_to_image"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 + 1) / 3)
    # without texts every caption is its own query, as before
    assert evaluate_embeddings(vecs, IMAGES, of)["counts"]["distinct_texts"] == 4


def test_map_by_category() -> None:
    r = evaluate_embeddings(TEXTS, IMAGES, OF, categories=CATS, R=50)
    # full-ranking AP, text -> image (images A, B, A):
    #   c0 A: I0 I1 I2 -> 1 0 1 -> (1 + 2/3)/2;  c1 A: I1 I0 I2 -> 0 1 1 -> (1/2 + 2/3)/2
    #   c2 B: I2 I0 I1 -> 0 0 1 -> 1/3;          c3 A: I2 I0 I1 -> 1 1 0 -> 1
    t2i = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2, 1 / 3, 1.0]
    # image -> text (captions A, A, B, A):
    #   I0 A: c0 c3 c1 c2 -> 1 1 1 0 -> 1;  I1 B: c1 c0 c3 c2 -> 0 0 0 1 -> 1/4
    #   I2 A: c2 c3 c0 c1 -> 0 1 1 1 -> (1/2 + 2/3 + 3/4)/3
    i2t = [1.0, 1 / 4, (1 / 2 + 2 / 3 + 3 / 4) / 3]
    assert r["map"]["text_to_image"] == pytest.approx(np.mean(t2i))
    assert r["map"]["image_to_text"] == pytest.approx(np.mean(i2t))
    # AP@50 divides by R = 50 even with fewer relevant items
    at50_t2i = [(1 + 2 / 3) / 50, (1 / 2 + 2 / 3) / 50, (1 / 3) / 50, 2 / 50]
    at50_i2t = [3 / 50, (1 / 4) / 50, (1 / 2 + 2 / 3 + 3 / 4) / 50]
    assert r["map_at_r"]["text_to_image"] == pytest.approx(np.mean(at50_t2i))
    assert r["map_at_r"]["image_to_text"] == pytest.approx(np.mean(at50_i2t))
    assert r["map_at_r"]["R"] == 50 and r["map_at_r"]["relevance"] == "category"
    # R = 2: AP@2 = (1/2) sum_{i<=2} P@i rel_i
    r2 = evaluate_embeddings(TEXTS, IMAGES, OF, categories=CATS, R=2)
    assert r2["map_at_r"]["text_to_image"] == pytest.approx(np.mean([1 / 2, 1 / 4, 0, 1]))
    # the paper's (Aggarwal et al. eq. 5) divides by M, the relevant items in the top R: at R = 50
    # every relevant item is found, so it is the full-ranking AP here
    paper = r["map_at_r_paper"]
    assert paper["text_to_image"] == pytest.approx(np.mean(t2i))
    assert paper["image_to_text"] == pytest.approx(np.mean(i2t))
    assert "Aggarwal" in paper["definition"] and "Musgrave" in r["map_at_r"]["definition"]
    # R = 2, text -> image: c0 1 0 -> 1/1; c1 0 1 -> (1/2)/1; c2 0 0 -> 0; c3 1 1 -> (1 + 1)/2
    assert r2["map_at_r_paper"]["text_to_image"] == pytest.approx(np.mean([1, 1 / 2, 0, 1]))
    assert "Aggarwal et al. eq. 5" in format_evaluation(r2)


def test_map_without_categories_is_by_image_with_r_the_relevant_count() -> None:
    r = evaluate_embeddings(TEXTS, IMAGES, OF)
    assert r["map_at_r"]["relevance"] == "image"
    assert r["map_at_r"]["text_to_image"] == pytest.approx(0.5)  # R = 1: AP@1 = hit at 1
    # I0 (2 captions, c0 c3 c1 ...): (1/2)(1) ; I1 (c2 at rank 4): 0 ; I2 (c3 at rank 2, R = 1): 0
    assert r["map_at_r"]["image_to_text"] == pytest.approx(0.5 / 3)
    assert r["map"]["text_to_image"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1]))  # 1/rank
    assert r["map"]["image_to_text"] == pytest.approx(np.mean([(1 + 2 / 3) / 2, 1 / 4, 1 / 2]))


def test_queries_without_a_usable_category_are_left_out() -> None:
    cats = ["A", None, "B", "A"]  # c1 has none; categories of images: A, B, A
    r = evaluate_embeddings(TEXTS, IMAGES, OF, categories=cats)
    assert r["map"]["queries_left_out"] == {"text_to_image": 1, "image_to_text": 0}
    assert r["map"]["text_to_image"] == pytest.approx(np.mean([(1 + 2 / 3) / 2, 1 / 3, 1.0]))
    assert image_categories(["B", "A", "A", None], np.array([0, 0, 0, 1]), 2) == ["A", None]
    assert image_categories(["B", "A"], np.array([0, 0]), 1) == ["A"]  # tie: alphabetically first


def test_bad_input() -> None:
    with pytest.raises(EmitError, match="image row"):
        evaluate_embeddings(TEXTS, IMAGES, [0, 0, 1, 3])
    with pytest.raises(EmitError, match="categories"):
        evaluate_embeddings(TEXTS, IMAGES, OF, categories=["A"])


class _Identity:
    """A stand-in model: texts are looked up, images pass through."""

    metric = "l2"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def text_vectors(self, texts):
        return np.stack([self.table[t] for t in texts])

    def image_vectors(self, feats):
        return np.asarray(feats, dtype=np.float32)

    def identity(self):
        return {"name": "lookup"}


def test_evaluate_captions_drops_unreadable_images_and_writes_json_and_png(tmp_path: Path) -> None:
    names = ["c0", "c1", "c2", "c3"]
    paths = [tmp_path / f"i{j}.png" for j in (0, 0, 1, 2)]
    caps = [Caption(p, n, c, str(p), "caps.jsonl", i + 1)
            for i, (p, n, c) in enumerate(zip(paths, names, CATS, strict=True))]
    model = _Identity(dict(zip(names, TEXTS, strict=True)))
    full = evaluate_captions(model, caps, IMAGES)
    assert full["text_to_image"] == evaluate_embeddings(TEXTS, IMAGES, OF)["text_to_image"]
    part = evaluate_captions(model, caps, IMAGES, ok=[True, False, True])  # I1 unreadable: c2 goes
    assert part["counts"]["captions"] == 3 and part["counts"]["captions_dropped"] == 1
    assert part["counts"]["images_dropped"] == 1
    assert part["text_to_image"]["R@1"] == 100.0  # without I1, c1 ranks its own I0 first
    json_path, png_path = write_evaluation(full, tmp_path / "out" / "eval")
    assert json.loads(json_path.read_text())["text_to_image"]["median_rank"] == 1.5
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files
    text = format_evaluation(full)
    assert "median rank 1.5" in text and "mAP" in text


def test_a_shared_text_takes_the_most_common_category_of_its_copies() -> None:
    # "black sandals" describes a sandal twice and a shoe once; caption order must not matter
    captions = [("black sandals", 0, "Sandal"), ("black sandals", 1, "Sandal"), ("black sandals", 2, "Shoes"),
                ("red hat", 3, "Hat")]
    images = np.array([[0, 1.0], [0, 0.9], [0.2, 1.0], [1, 0]], dtype=np.float32)
    vec = {"black sandals": [0, 1.0], "red hat": [1, 0]}
    reports = []
    for order in ([0, 1, 2, 3], [2, 0, 1, 3]):  # the shoe's copy first in the second order
        texts, of, cats = zip(*(captions[i] for i in order), strict=True)
        vecs = np.array([vec[t] for t in texts], dtype=np.float32)
        reports.append(evaluate_embeddings(vecs, images, list(of), texts=list(texts), categories=list(cats),
                                           R=2))
    assert reports[0]["map_at_r"] == reports[1]["map_at_r"]
    assert reports[0]["map"] == reports[1]["map"]
