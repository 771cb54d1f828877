"""Every public module declares __all__, and it lists exactly its public names."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import nbchat

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(nbchat.__path__, "nbchat.")
    if not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_complete(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == name
    }
    missing = defined - set(module.__all__)
    assert not missing, f"{name}.__all__ lacks {sorted(missing)}"
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ names missing {public}"


def test_top_level_api() -> None:
    assert set(nbchat.__all__) >= {"Chat", "Reply", "__version__"}


def _own_public_names(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


@pytest.mark.parametrize("cls", [nbchat.Chat, nbchat.Reply])
def test_help_names_every_parameter_attribute_and_method_at_the_top(cls: type) -> None:
    # help(Chat) and Chat? open with the class docstring, before the inherited widget
    # machinery: it must answer the basic questions on its own.
    doc = inspect.getdoc(cls) or ""
    names = _own_public_names(cls) | set(inspect.signature(cls.__init__).parameters)
    names -= {"self", "reply_id", "control"}  # Reply's constructor is internal
    if cls is nbchat.Reply:
        names |= {"id", "prompt", "model", "params", "error", "error_code", "usage"}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", doc))
    assert not missing, f"{cls.__name__}'s docstring does not mention {missing}"
