"""emit.pairing's public face: every exported name is the library's own object, loaded lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import emit.pairing as pairing


@pytest.mark.parametrize("name", pairing.__all__)
def test_every_public_name_is_the_defining_modules_object(name: str) -> None:
    module = importlib.import_module(pairing._EXPORTS[name])
    assert getattr(pairing, name) is getattr(module, name)
    assert name in dir(pairing)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pairing.nope  # noqa: B018


def test_a_light_module_does_not_pull_in_torch_through_the_package() -> None:
    code = "import sys, emit.pairing.assign; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
