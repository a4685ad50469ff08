"""The command line: help for every command, labels stats, and errors that name the path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from emit import __version__
from emit.cli import build_parser, main
from emit.config import PairingConfig

HELP = [
    [],
    ["pair"],
    ["pair", "train"],
    ["pair", "predict"],
    ["pair", "evaluate"],
    ["split"],
    ["labels"],
    ["labels", "stats"],
    ["demo"],
]


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()  # main() sets the thread count for the process
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", HELP, ids=lambda c: " ".join(c) or "emit")
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: emit")
    assert " ".join(["emit", *command]) in out.splitlines()[0] or command == []


def test_train_help_lists_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pair", "train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--max-epochs", "--bag-size", "--backbone", "--bag-combine", "--assign",
                 "hflip-tta", "product-context", "--cache-dir", "--image-root"):
        assert flag in out
    # argparse may wrap a long default at its hyphen: compare without the white space
    assert PairingConfig().backbone in "".join(out.split())


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_missing_or_bad_arguments_exit_two(capsys):
    bad = ([], ["pair"], ["pair", "train"], ["frobnicate"], ["pair", "predict", "m", "d", "--assign", "x"])
    for argv in bad:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_train_flags_reach_the_config():
    from emit.cli.pair import config_from

    args = build_parser().parse_args(["pair", "train", "d", "--out", "m", "--max-epochs", "7",
                                      "--lr", "0.01", "--bag-combine", "vote", "--weights", "w.pt",
                                      "--hidden", "0"])
    config = config_from(args)
    assert (config.max_epochs, config.lr, config.bag_combine, config.weights) == (7, 0.01, "vote", "w.pt")
    assert config.hidden == 0
    # everything not given keeps the library default
    defaults = PairingConfig()
    assert (config.hflip_tta, config.product_context, config.backbone, config.seed) == (
        defaults.hflip_tta, defaults.product_context, defaults.backbone, defaults.seed)
    assert isinstance(config.max_epochs, int) and isinstance(config.lr, float)


def test_bad_config_value_is_an_error_not_a_traceback(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["pair", "train", str(tmp_path), "--out", str(tmp_path / "m"), "--bag-size", "0",
                     "--threads", "1"])
    assert code == 2
    assert "bag_size" in caplog.text


# ---- labels stats --------------------------------------------------------------------------


def write_products(root: Path) -> Path:
    tags = [["黑色", "白色"], ["黑色", "K12红色"], ["【黑色】", "白色", "加绒"]]
    for k, opts in enumerate(tags):
        folder = root / f"{800 + k}"
        folder.mkdir(parents=True)
        profile = {"optional_tags": opts, "imgs_tags": [{f"{k}_{i}.jpg": ""} for i in range(len(opts))]}
        (folder / "profile.json").write_text(json.dumps(profile, ensure_ascii=False), encoding="utf-8")
    return root


def test_labels_stats_on_products(tmp_path, capsys):
    data = write_products(tmp_path / "products")
    assert main(["labels", "stats", str(data), "--min-count", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    # 5 distinct tags in 7 occurrences; labels with >= 2 occurrences: 黑 (3), 白 (2)
    assert "5 distinct tags, 7 occurrences in 3 products" in out
    assert "labels in vocabulary: 2" in out
    # covered: 黑色, 白色, 【黑色】 -> 3/5 distinct; 5/7 occurrences
    assert "3/5 = 60.0% of distinct tags, 71.4% of occurrences" in out
    assert "黑 3" in out and "白 2" in out
    assert "加绒" in out.split("examples without a label:")[1]


def test_labels_stats_on_text_file_as_json(tmp_path, capsys):
    tags = tmp_path / "tags.txt"
    tags.write_text("黑色\n白色\n\n黑色\n藏青色\n  加绒  \n", encoding="utf-8")
    assert main(["labels", "stats", str(tags), "--min-count", "1", "--json", "--threads", "1"]) == 0
    stats = json.loads(capsys.readouterr().out)
    cov = stats["coverage"]
    assert stats["products"] == 0
    assert cov["distinct_tags"] == 4 and cov["tag_occurrences"] == 5  # blank line dropped, stripped
    assert cov["distinct_coverage"] == 1.0
    assert dict((lab, c) for lab, c in stats["labels"])["黑"] == 2


def test_labels_stats_text_file_prints_coverage(tmp_path, capsys):
    tags = tmp_path / "tags.txt"
    tags.write_text("黑色\n黑色\n白色\n加绒\n", encoding="utf-8")
    assert main(["labels", "stats", str(tags), "--min-count", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 distinct tags, 4 occurrences in 0 products" in out
    assert "1/3 = 33.3% of distinct tags, 50.0% of occurrences" in out


def test_labels_stats_with_a_model_vocab(tmp_path, capsys):
    from emit.text.labels import LabelVocab

    vocab = tmp_path / "vocab.json"
    LabelVocab(labels=["白"], counts=[1]).save(vocab)
    data = write_products(tmp_path / "products")
    assert main(["labels", "stats", str(data), "--vocab", str(vocab), "--threads", "1"]) == 0
    assert "labels in vocabulary: 1" in capsys.readouterr().out


# ---- errors name the path ------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "named"), [
    (["pair", "train", "{missing}", "--out", "{tmp}/model"], "{missing}"),
    (["pair", "predict", "{tmp}", "{missing}"], "{tmp}"),  # tmp holds no model.json
    (["pair", "predict", "{missing}", "{tmp}"], "{missing}"),
    (["pair", "evaluate", "{tmp}/final.json", "{missing}"], "{missing}"),
    (["labels", "stats", "{missing}"], "{missing}"),
    (["split", "{missing}", "--out", "{tmp}/s.json"], "{missing}"),
])
def test_missing_path_exits_two_and_names_it(argv, named, tmp_path, caplog, capsys):
    missing = str(tmp_path / "no-such-thing")
    argv = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    named = named.format(missing=missing, tmp=tmp_path)
    with caplog.at_level(logging.INFO, logger="emit"):
        code = main([*argv, "--threads", "1"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the failure must be logged once, as an error"
    assert named in errors[0]
    assert "Traceback" not in capsys.readouterr().err


def test_evaluate_missing_predictions_names_the_file(tmp_path, caplog):
    truth = tmp_path / "truth"
    folder = truth / "801"
    folder.mkdir(parents=True)
    (folder / "profile.json").write_text(json.dumps(
        {"optional_tags": ["黑色", "白色"], "imgs_tags": [{"a.jpg": "黑色"}, {"b.jpg": "白色"}]},
        ensure_ascii=False), encoding="utf-8")
    missing = tmp_path / "final_json.json"
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["pair", "evaluate", str(missing), str(truth), "--threads", "1"])
    assert code == 2
    assert str(missing) in caplog.text


def test_missing_train_data_message(tmp_path, caplog):
    missing = tmp_path / "absent-data"
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["pair", "train", str(missing), "--out", str(tmp_path / "m"), "--threads", "1"])
    assert code == 2
    assert f"{missing}: no such file or folder" in caplog.text
    assert not (tmp_path / "m").exists()


def test_predict_missing_model_message(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="emit"):
        code = main(["pair", "predict", str(tmp_path / "no-model"), str(tmp_path), "--out",
                     str(tmp_path / "f.json"), "--threads", "1"])
    assert code == 2
    assert str(tmp_path / "no-model") in caplog.text and "model.json" in caplog.text
    assert not (tmp_path / "f.json").exists()


@pytest.mark.parametrize("flag", [["--dropout", "1.5"], ["--weight-decay", "-1"]])
def test_bad_dropout_or_weight_decay_is_refused_up_front(flag):
    from emit.problems import EmitError

    args = build_parser().parse_args(["pair", "train", "d", "--out", "m", *flag])
    with pytest.raises(EmitError, match=flag[0][2:].replace("-", "_")):
        PairingConfig(**{k: v for k, v in vars(args).items()
                         if k in PairingConfig.__dataclass_fields__}).validate()
