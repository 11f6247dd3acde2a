"""Name → method class. Adding a method is adding one file under ``dwakd/methods`` or ``baselines``
that decorates its class with ``@register``; ``get_method`` imports both packages once to find it."""

from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def register(cls: type) -> type:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice ({_REGISTRY[cls.name]} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for pkg_name in ("dwakd.methods", "baselines"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ModuleNotFoundError:
            continue
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_") and mod.name != "base":
                importlib.import_module(f"{pkg_name}.{mod.name}")
    _DISCOVERED = True


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
