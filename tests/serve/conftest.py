"""Fixtures of the service tests, built once per session in a temporary folder (see serve_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="emit serve needs the serve extra")

from serve_helpers import Built, LiveServer, build_all, start_server


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_all(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def live_server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(built, tmp_path_factory.mktemp("live"))
    yield server
    server.stop()
