"""Every public name polyproc defines has a docstring (issue #6).

Walks ``__all__`` of each public face. A class or function counts when polyproc
defines it (``__module__`` is ours: re-exported stdlib names are the stdlib's
business); for a class, so does every public method and property defined in its
own ``__dict__`` or in that of a polyproc base (stdlib bases are skipped).
Proxy classes that ``MakeProxyType`` generates and the ``manager.<typeid>()``
methods that ``register`` adds are documented when they are made; the last two
tests check that for types a user makes, which no face lists.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

FACES = (
    "polyproc",
    "polyproc.connection",
    "polyproc.process",
    "polyproc.context",
    "polyproc.queues",
    "polyproc.synchronize",
    "polyproc.sharedctypes",
    "polyproc.shared_memory",
    "polyproc.dummy",
    "polyproc.dummy.connection",
    "polyproc.errors",
    "polyproc.pool",
    "polyproc.futures",
    "polyproc.managers",
)


def _ours(obj: Any) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "polyproc"


def _documented(obj: Any) -> bool:
    doc = getattr(obj, "__doc__", None)  # a class's own: ``__doc__`` is not inherited
    return isinstance(doc, str) and bool(doc.strip())


def _key(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _members(cls: type) -> list[tuple[str, Any]]:
    """(key, documented object) for each public method/property polyproc defines on ``cls``."""
    found = []
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property) or inspect.isroutine(attr):
                found.append((f"{_key(klass)}.{name}", attr))
    return found


def _walk() -> tuple[dict[str, str], dict[str, str]]:
    """({key: face} of everything checked, {key: face} of what lacks a docstring)."""
    seen: dict[str, str] = {}
    missing: dict[str, str] = {}
    for face in FACES:
        module = importlib.import_module(face)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not _ours(obj):
                continue
            entries = [(_key(obj), obj)]
            if inspect.isclass(obj):
                entries += _members(obj)
            for key, item in entries:
                if key in seen:
                    continue
                seen[key] = face
                if not _documented(item):
                    missing[key] = face
    return seen, missing


def test_public_api_is_documented() -> None:
    seen, missing = _walk()
    assert len(seen) > 300, "the walk found too little: is it still looking at the faces?"
    undocumented = sorted(f"{key}  (via {face})" for key, face in missing.items())
    assert not undocumented, "public names without a docstring:\n" + "\n".join(undocumented)


def test_generated_proxy_types_are_documented() -> None:
    from polyproc.managers import MakeProxyType

    cls = MakeProxyType("DocProbeProxy", ("ping", "__len__"))
    assert _documented(cls)
    assert "ping" in (vars(cls)["ping"].__doc__ or "")
    assert _documented(vars(cls)["__len__"])


def test_registered_create_methods_are_documented() -> None:
    from polyproc.managers import BaseManager

    class DocProbeManager(BaseManager):
        pass

    DocProbeManager.register("Thing", dict)
    assert "Thing" in (vars(DocProbeManager)["Thing"].__doc__ or "")
