"""Flags generated from the config dataclasses: every field is a flag with help, every help line
shows its default once, a flag the chosen text encoder does not use is refused, both workflows
list the same backbones, and the command line has no import circle and parses without torch."""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emit.cli import build_parser, main
from emit.cli.app import commands
from emit.cli.config_flags import given_flags
from emit.config import PairingConfig
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders.names import ENCODER_SETTINGS, encoder_settings, list_text_encoders

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIGS = {PairingConfig: ["pair", "train"], RetrievalConfig: ["retrieval", "train"]}
REQUIRED = {PairingConfig: ["d", "--out", "m"], RetrievalConfig: ["--out", "m"]}
FIELDS = [(cls, f) for cls in CONFIGS for f in dataclasses.fields(cls)]


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()  # main() sets the thread count for the process
    yield
    torch.set_num_threads(before)



def help_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def entries(help_output: str) -> dict[str, str]:
    """``{first option string: its whole entry, lines joined}`` of a --help output."""
    found: dict[str, str] = {}
    current = None
    for line in help_output.splitlines():
        if re.match(r"^  \S", line):
            current = line.split()[0].rstrip(",")
            found[current] = line.strip()
        elif current is not None and line.startswith("   "):
            found[current] += " " + line.strip()
        else:
            current = None
    return found


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def literal(value: object) -> str:
    return str(value)


# ---- (a) every config field has help and is a flag -----------------------------------------


@pytest.mark.parametrize(("cls", "field"), FIELDS, ids=[f"{c.__name__}.{f.name}" for c, f in FIELDS])
def test_every_config_field_has_help_and_a_flag_that_reaches_the_config(cls, field, capsys):
    assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
    out = help_text(CONFIGS[cls], capsys)
    assert re.search(rf"{flag(field.name)}\b", out)
    parser = build_parser()
    base = [*CONFIGS[cls], *REQUIRED[cls]]
    default = getattr(cls(), field.name)
    if isinstance(default, bool):
        assert f"--no-{field.name.replace('_', '-')}" in out
        on = parser.parse_args([*base, flag(field.name)])
        off = parser.parse_args([*base, f"--no-{field.name.replace('_', '-')}"])
        assert (getattr(on, field.name), getattr(off, field.name)) == (True, False)
        assert given_flags(off) == {field.name: f"--no-{field.name.replace('_', '-')}"}
        return
    value = default if default not in (None, "") else {"weights": "w.pt", "vectors": "v.txt",
                                                       "margin": 0.5, "extra_stopwords": "men",
                                                       "epochs": 3}[field.name]
    args = parser.parse_args([*base, flag(field.name), literal(value)])
    assert getattr(args, field.name) == value and type(getattr(args, field.name)) is type(value)
    assert given_flags(args) == {field.name: flag(field.name)}
    assert getattr(args, field.name) == getattr(dataclasses.replace(cls(), **{field.name: value}), field.name)


def test_flags_not_given_are_not_noted_and_keep_the_defaults():
    args = build_parser().parse_args(["retrieval", "train", "--out", "m"])
    assert given_flags(args) == {}
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(RetrievalConfig)} == \
        dataclasses.asdict(RetrievalConfig())
    args = build_parser().parse_args(["pair", "train", "d", "--out", "m"])
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(PairingConfig)} == \
        dataclasses.asdict(PairingConfig())


def test_choices_come_from_the_registries_and_the_caption_reader(capsys):
    from emit.data.captions import FORMATS
    from emit.retrieval.losses.registry import list_losses

    out = help_text(["retrieval", "train"], capsys)
    assert "--encoder {" + ",".join(list_text_encoders()) + "}" in out
    assert "--loss {" + ",".join(list_losses()) + "}" in out
    assert "--titles-format {" + ",".join(["auto", *FORMATS]) + "}" in out


# ---- (b) every help line shows its default once ---------------------------------------------

COMMANDS = [words for words, _ in commands()]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "emit")
def test_no_help_line_shows_its_default_twice(command, capsys):
    out = help_text(list(command), capsys)
    for option, entry in entries(out).items():
        assert len(re.findall(r"\bdefault\b", entry)) <= 1, f"emit {' '.join(command)} {option}: {entry}"
        assert "%(" not in entry and "{names}" not in entry


def test_the_cache_dir_default_is_shown_everywhere_the_same(capsys):
    from emit.cli.options import CACHE_DIR_DEFAULT

    for command in (["pair", "train"], ["pair", "predict"], ["retrieval", "train"], ["retrieval", "evaluate"],
                    ["index", "build"], ["search"], ["serve"]):
        entry = entries(help_text(command, capsys))["--cache-dir"]
        assert entry.count(CACHE_DIR_DEFAULT) == 1 and entry.count("default") == 1, (command, entry)


# ---- (c) a flag the chosen encoder does not use is refused ------------------------------------


@pytest.mark.parametrize("encoder", list_text_encoders())
def test_a_flag_the_encoder_does_not_use_is_refused_and_named(encoder, tmp_path, caplog):
    unused = sorted(ENCODER_SETTINGS - encoder_settings(encoder))
    assert unused, f"every encoder has settings of other encoders to refuse ({encoder})"
    defaults = RetrievalConfig()
    for name in unused:
        value = getattr(defaults, name)  # even the default value: typed, so not ignored
        argv = ["retrieval", "train", "--encoder", encoder, "--titles", "t.jsonl", "--out",
                str(tmp_path / "run"), flag(name), literal("v.txt" if value is None else value),
                "--threads", "1"]
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="emit"):
            assert main(argv) == 2
        users = [e for e in list_text_encoders() if name in encoder_settings(e)]
        message = caplog.text
        assert flag(name) in message and f"not to --encoder {encoder}" in message, message
        assert f"only applies to --encoder {users[0]}" in message, message
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("encoder", list_text_encoders())
def test_the_encoders_own_flags_pass_the_check(encoder):
    from emit.cli.retrieval import config_from

    argv = ["retrieval", "train", "--out", "m", "--encoder", encoder]
    for name in sorted(encoder_settings(encoder)):
        value = getattr(RetrievalConfig(), name)
        argv += [flag(name), literal("v.txt" if value is None else value)]
    config = config_from(build_parser().parse_args(argv))
    assert config.encoder == encoder


def test_the_check_also_guards_callers_of_the_command_function():
    from emit.cli.retrieval import cmd_retrieval_train

    args = build_parser().parse_args(["retrieval", "train", "--out", "m", "--encoder", "minilm",
                                      "--hidden", "512"])
    with pytest.raises(EmitError, match="--hidden only applies to --encoder lstm"):
        cmd_retrieval_train(args)


# ---- (d) one list of backbones ---------------------------------------------------------------


def test_pair_train_and_retrieval_train_list_the_same_backbones(capsys):
    from emit.vision.backbones import list_backbones

    listed = []
    for command in (["pair", "train"], ["retrieval", "train"]):
        entry = entries(help_text(command, capsys))["--backbone"]
        names = re.search(r"backbone: (.*?), timm:<name>", entry)
        assert names is not None, entry
        listed.append(names.group(1).replace("- ", "-").split(", "))  # undo argparse's wrap at hyphens
    assert listed[0] == listed[1] == list_backbones()


# ---- (e) no import circle; parsing needs no torch ---------------------------------------------


def cli_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "emit").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        graph[name] = {t for t in targets if t.startswith("emit") and t != name}
    return graph


def test_the_command_line_has_no_import_circle_and_nothing_below_imports_it():
    graph = cli_imports()
    cli = {name for name in graph if name == "emit.cli" or name.startswith("emit.cli.")}
    assert {"emit.cli", "emit.cli.app", "emit.cli.options", "emit.cli.config_flags"} <= cli
    for name in graph:  # the library never imports its command line (only `python -m emit` does)
        if name not in cli and name != "emit.__main__":
            assert not {t for t in graph[name] if t == "emit.cli" or t.startswith("emit.cli.")}, name
    edges = {name: graph[name] & cli for name in cli}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in sorted(edges[node]):
            assert state.get(child) != 1, "import circle: " + " -> ".join([*path, node, child])
            if child not in state:
                visit(child, [*path, node])
        state[node] = 2

    for name in sorted(cli):
        if name not in state:
            visit(name, [])
    for old in ("cli.py", "cli_retrieval.py", "cli_serve.py"):
        assert not (SRC / "emit" / old).exists()


def test_help_and_parsing_import_no_torch():
    code = ("import sys\nfrom emit.cli import build_parser, main\n"
            "build_parser().parse_args(['retrieval', 'train', '--out', 'm', '--encoder', 'minilm'])\n"
            "build_parser().parse_args(['pair', 'train', 'd', '--out', 'm', '--hflip-tta'])\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'faiss') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


@pytest.mark.parametrize("module", ["emit", "emit.cli"])
def test_python_dash_m_runs_the_command_line(module):
    from emit import __version__

    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"emit {__version__}"


def test_cache_dir_help_names_the_real_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The help spells the cache default out (it must not import torch); it is the library's."""
    from emit.cli.options import CACHE_DIR_DEFAULT
    from emit.vision.features import default_cache_dir

    monkeypatch.delenv("EMIT_CACHE_DIR", raising=False)
    assert Path(CACHE_DIR_DEFAULT).expanduser() == default_cache_dir()
