"""Name → method class. Adding a method is adding one file under ``dwakd/methods`` or ``baselines``
that decorates its class with ``@register``; ``get_method`` imports both packages once to find it."""

from __future__ import annotations

import importlib
import pkgutil
import re

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


def cross_tokenizer_methods() -> list[str]:
    """The registered methods for a teacher and a student with different vocabularies (``needs_teacher_tokens``:
    each side reads its own tokenisation), in the order of their papers (the first arXiv id of each citation)."""
    _discover()
    cross = [n for n, c in _REGISTRY.items() if c.needs_teacher_tokens]
    return sorted(cross, key=lambda n: (re.findall(r"arXiv (\d{4}\.\d{4,5})", _REGISTRY[n].citation) or ["~"])[0])


def merge_term_labels(per_method: dict[str, dict[str, str]]) -> dict[str, str]:
    """Method name → its loss-term labels, merged into term → label: a term that methods label differently gets
    their labels joined with " / ", in method-name order (one curve panel shows the term of every method)."""
    labels: dict[str, list[str]] = {}
    for _, terms in sorted(per_method.items()):
        for term, label in terms.items():
            if label not in labels.setdefault(term, []):
                labels[term].append(label)
    return {t: " / ".join(ls) for t, ls in labels.items()}


def term_labels(names: list[str] | None = None) -> dict[str, str]:
    """The merged loss-term labels (``Method.term_labels``) of the methods ``names`` (default: all registered)."""
    _discover()
    return merge_term_labels({n: dict(getattr(get_method(n), "term_labels", {}))
                              for n in (names if names is not None else _REGISTRY)})


def specs() -> dict[str, dict]:
    """What the torch-free readers of config/config.yaml (the dry run, the workflow, ``dwakd figures``) know of
    the methods (``dwakd.config.method_specs``): each registered method's Config dataclass (``config``: its name;
    ``options``: ``dwakd.settings.option_fields``), its capabilities (``Method.CAPABILITIES``: its training data,
    whether it needs a vocabulary map, whether it has a cross-model attention) and its loss-term labels."""
    from dwakd.methods.base import Method
    from dwakd.settings import option_fields

    _discover()
    return {n: {"config": c.Config.__name__, "options": option_fields(c.Config),
                **{k: getattr(c, k) for k in Method.CAPABILITIES},
                "term_labels": dict(getattr(c, "term_labels", {}))} for n, c in sorted(_REGISTRY.items())}


if __name__ == "__main__":  # `python -m dwakd.registry`: specs() and the project files they were read from, as JSON
    import hashlib
    import json
    import sys
    from pathlib import Path

    from dwakd import registry  # this file runs as __main__: the methods register in the imported module

    out = registry.specs()
    root = Path(__file__).resolve().parent.parent
    files = {}
    for mod in list(sys.modules.values()):
        f = Path(getattr(mod, "__file__", None) or "/").resolve()
        if f.suffix == ".py" and f.is_relative_to(root) and f.parts[len(root.parts)] in ("dwakd", "baselines"):
            files[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    print(json.dumps({"methods": out, "files": files}))
