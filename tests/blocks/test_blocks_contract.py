"""Every siyu block type meets the same bar: described fields, a load example, Secret secrets."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing

import pytest
from prefect.blocks.core import Block
from pydantic import SecretBytes, SecretStr

import siyu.blocks

MODULES = sorted(m.name for m in pkgutil.walk_packages(siyu.blocks.__path__, "siyu.blocks."))
SECRET_NAME = re.compile(r"secret|password|passwd|token|salt|credential|api_?key|(^|_)key$")


def _block_types() -> list[type[Block]]:
    found: list[type[Block]] = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # reported by test_block_modules_import, not as a collection error
            continue
        found.extend(
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Block) and obj.__module__ == name
        )
    return found


BLOCK_TYPES = _block_types()


def _mentions_secret_type(annotation: object) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_mentions_secret_type(arg) for arg in typing.get_args(annotation))


@pytest.mark.parametrize("module", MODULES)
def test_block_modules_import(module: str) -> None:
    importlib.import_module(module)


def test_the_wecom_block_is_discovered() -> None:
    assert "WeComApp" in {b.__name__ for b in BLOCK_TYPES}


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
def test_every_field_has_a_description(block: type[Block]) -> None:
    missing = [name for name, field in block.model_fields.items() if not field.description]
    assert missing == [], f"{block.__name__} fields without a description: {missing}"


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
def test_docstring_shows_how_to_load_it(block: type[Block]) -> None:
    assert f"{block.__name__}.load(" in (block.__doc__ or "")


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
def test_slug_is_namespaced(block: type[Block]) -> None:
    assert block.get_block_type_slug().startswith("siyu-")


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
def test_secrets_are_secret_fields(block: type[Block]) -> None:
    exposed = [
        name
        for name, field in block.model_fields.items()
        if SECRET_NAME.search(name) and not _mentions_secret_type(field.annotation)
    ]
    assert exposed == [], f"{block.__name__} keeps secrets in plain fields: {exposed}"


def test_the_checks_catch_a_careless_block() -> None:
    class CarelessBlock(Block):
        """Holds a token in the open and shows no way to load it."""

        _block_type_slug = "careless-block-for-the-contract-test"

        api_token: str = "t"
        host: str = "h"

    for check in (
        test_every_field_has_a_description,
        test_docstring_shows_how_to_load_it,
        test_slug_is_namespaced,
        test_secrets_are_secret_fields,
    ):
        with pytest.raises(AssertionError):
            check(CarelessBlock)
