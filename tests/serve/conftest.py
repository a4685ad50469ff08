"""Fixtures of the service tests, built once per session in a temporary folder (see serve_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="emit serve needs the serve extra")

from serve_helpers import API_TOKEN, Built, LiveServer, build_all, start_server

from emit.serve.services import Services, load_services


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_all(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def live_server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(built, tmp_path_factory.mktemp("live"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """emit serve started with --api-token API_TOKEN."""
    server = start_server(built, tmp_path_factory.mktemp("live-token"), "--api-token", API_TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_services(built: Built) -> Services:
    """The index and the pairing model, loaded once for the apps of several test modules."""
    return load_services(built.index, None, built.pairing_model, built.cache)
