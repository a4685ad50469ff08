"""Configuration of ``emit serve``: defaults, then EMIT_* variables, then flags; bad values stop
start-up with a message that names the variable and the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from emit.problems import EmitError
from emit.serve.settings import MB, ServeSettings


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(tmp_path: Path) -> None:
    env = {"EMIT_PAIRING_MODEL": "m", "EMIT_PORT": "9001", "EMIT_MAX_TOP_K": "7", "EMIT_LOG_LEVEL": "DEBUG"}
    settings = ServeSettings.from_env(env, port="9002", max_images=None)
    assert settings.port == 9002  # flag
    assert settings.limits.max_top_k == 7 and settings.log_level == "debug"  # variables
    assert settings.limits.max_images == 32 and settings.host == "127.0.0.1"  # defaults
    assert ServeSettings.from_env(env, max_upload_mb="0.5").limits.max_upload_bytes == MB // 2


def test_paths_are_absolute_so_what_the_pages_show_does_not_depend_on_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = ServeSettings.from_env({"EMIT_PAIRING_MODEL": "runs/m1"}, products_root=".")
    assert settings.pairing_model == tmp_path / "runs" / "m1"
    assert settings.products_root is not None and settings.products_root.resolve() == tmp_path
    assert settings.export_dir == tmp_path / "emit-exports"  # the default too


@pytest.mark.parametrize(("env", "says"), [
    ({"EMIT_PORT": "eighty"}, "EMIT_PORT"),
    ({"EMIT_PORT": "70000"}, "port"),
    ({"EMIT_MAX_TOP_K": "1.5"}, "EMIT_MAX_TOP_K"),
    ({"EMIT_MAX_IMAGES": "0"}, "max_images"),
    ({"EMIT_MAX_UPLOAD_MB": "nan"}, "EMIT_MAX_UPLOAD_MB"),
    ({"EMIT_MAX_UPLOAD_MB": "inf"}, "EMIT_MAX_UPLOAD_MB"),
    ({"EMIT_MAX_UPLOAD_MB": "-1"}, "EMIT_MAX_UPLOAD_MB"),
    ({"EMIT_SHUTDOWN_TIMEOUT": "-1"}, "shutdown timeout"),
    ({"EMIT_SHUTDOWN_TIMEOUT": "0"}, "shutdown timeout"),
    ({"EMIT_SHUTDOWN_TIMEOUT": "nan"}, "shutdown timeout"),
    ({"EMIT_LOG_LEVEL": "loud"}, "EMIT_LOG_LEVEL"),
    ({"EMIT_PRODUCTS_ROOT": "/no/such/folder"}, "products root"),
    ({}, "--index"),  # nothing to serve
])
def test_bad_settings_stop_start_up_with_a_message(env: dict[str, str], says: str) -> None:
    if env:
        env = {"EMIT_PAIRING_MODEL": "m", **env}
    with pytest.raises(EmitError, match=says):
        ServeSettings.from_env(env)


def test_an_export_folder_that_could_never_be_written_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EmitError, match="is not a folder"):
        ServeSettings.from_env({"EMIT_PAIRING_MODEL": "m", "EMIT_EXPORT_DIR": str(blocker / "exports")})
    ok = ServeSettings.from_env({"EMIT_PAIRING_MODEL": "m", "EMIT_EXPORT_DIR": str(tmp_path / "new" / "x")})
    assert ok.export_dir == tmp_path / "new" / "x" and not ok.export_dir.exists()  # made on first export
