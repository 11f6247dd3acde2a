"""docs/methods.md, the method reference: every registered method has a section, every documented default is the
code's, and every reference to the page names a section that exists.

Conventions of the page that these tests rely on (its introduction states them too):

* a method's section heading ends with its registry name in backticks, ``## DSKD-CMA (`dskd_cma`)``; the
  section's *title* is the heading without that suffix ("DSKD-CMA"), and other files cite it as
  ``docs/methods.md "DSKD-CMA"``;
* a defaults table follows a line ``Defaults of `<module>.<Class>` ``, has the header
  ``| option | default | source |`` and one row per option, ``| `name` | `<Python literal>` | <source> |``; a
  line ``Defaults of `<module>.<Class>`: none ...`` without a table documents a dataclass without fields.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from dwakd import registry

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = "docs/methods.md"
DOC = ROOT / DOC_PATH
OLD_SPEC = "METHODS" + ".md"  # the former external specification, spelled in two parts so this file never names it

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
_NAME_SUFFIX = re.compile(r"\s*\(`([A-Za-z0-9_]+)`\)$")
_DEFAULTS = re.compile(r"^Defaults of `([A-Za-z_][\w.]*)`")
_TABLE_HEADER = ["option", "default", "source"]
_CELL_CODE = re.compile(r"^`(.+)`$")
_REFERENCE = re.compile(r'docs/methods\.md,?\s+"([^"\n]+)"')


@dataclass(frozen=True)
class Section:
    level: int
    title: str  # the heading without a trailing "(`name`)"
    name: str | None  # the registry name in the heading, if any
    start: int  # line index of the heading
    end: int  # line index after the section (its subsections included)


def _doc_lines() -> list[str]:
    return DOC.read_text(encoding="utf-8").splitlines()


def _sections(lines: list[str]) -> list[Section]:
    heads, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for k, (i, level, text) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        m = _NAME_SUFFIX.search(text)
        out.append(Section(level, text[:m.start()] if m else text, m.group(1) if m else None, i, end))
    return out


def _literal(cell: str, where: str):
    m = _CELL_CODE.match(cell)
    if m is None:
        pytest.fail(f"{where}: expected a value in backticks, got {cell!r}")
    try:
        return ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        pytest.fail(f"{where}: {m.group(1)!r} is not a Python literal")


def _defaults_blocks(lines: list[str], start: int = 0, end: int | None = None) -> dict[str, dict[str, object]]:
    """``{"module.Class": {option: documented default}}`` of the defaults tables in ``lines[start:end]``."""
    end = len(lines) if end is None else end
    blocks: dict[str, dict[str, object]] = {}
    for i in range(start, end):
        m = _DEFAULTS.match(lines[i])
        if m is None:
            continue
        cls_path, rows = m.group(1), {}
        if cls_path in blocks:
            pytest.fail(f"{DOC_PATH}:{i + 1}: a second defaults table of {cls_path}")
        j = i + 1
        while j < end and not lines[j].strip():
            j += 1
        table = []
        while j < end and lines[j].lstrip().startswith("|"):
            table.append((j, [c.strip() for c in lines[j].strip().strip("|").split("|")]))
            j += 1
        if table:
            (hj, header), rows_ = table[0], table[2:]
            if header != _TABLE_HEADER:
                pytest.fail(f"{DOC_PATH}:{hj + 1}: a defaults table's header must be {_TABLE_HEADER}, got {header}")
            for rj, cells in rows_:
                where = f"{DOC_PATH}:{rj + 1}"
                if len(cells) != 3 or not cells[2]:
                    pytest.fail(f"{where}: expected `| option | default | source |` with a source, got {cells}")
                opt = _CELL_CODE.match(cells[0])
                if opt is None:
                    pytest.fail(f"{where}: the option must be in backticks, got {cells[0]!r}")
                if opt.group(1) in rows:
                    pytest.fail(f"{where}: option {opt.group(1)!r} listed twice")
                rows[opt.group(1)] = _literal(cells[1], where)
        blocks[cls_path] = rows
    return blocks


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _code_defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = dataclasses.MISSING
    return out


def _mismatches(documented: dict[str, object], cls: type) -> list[str]:
    code = _code_defaults(cls)
    bad = []
    for opt, value in documented.items():
        if opt not in code:
            bad.append(f"{opt}: documented, but {cls.__qualname__} has no such field")
        elif type(value) is not type(code[opt]) or value != code[opt]:
            bad.append(f"{opt}: documented {value!r}, code default {code[opt]!r}")
    return bad


def _config_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _repo_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (so a new file counts before its commit)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"not a git checkout: {res.stderr.decode(errors='replace').strip()}")
    return sorted({p for p in res.stdout.decode("utf-8").split("\0") if p and (ROOT / p).is_file()})


METHODS = registry.available()


# ---------------------------------------------------------------------------------------------------- references

def test_no_file_but_the_method_reference_mentions_the_old_specification():
    hits = []
    for rel in _repo_files():
        if rel == DOC_PATH:
            continue
        data = (ROOT / rel).read_bytes()
        if OLD_SPEC.encode() not in data:
            continue
        text = data.decode("utf-8", errors="replace")
        hits += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if OLD_SPEC in line] or [rel]
    assert not hits, f"point these to {DOC_PATH} (and a section) instead of {OLD_SPEC}: {hits}"


def test_every_reference_to_the_method_reference_names_an_existing_section():
    titles = {s.title for s in _sections(_doc_lines())}
    missing = []
    for rel in _repo_files():
        if Path(rel).suffix in {".gz", ".png", ".pdf", ".pt", ".safetensors", ".bin"}:
            continue
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in _REFERENCE.finditer(text):
            name = " ".join(m.group(1).split())
            if name not in titles:
                missing.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {name!r}")
    assert not missing, f"sections that {DOC_PATH} does not have (titles: {sorted(titles)}): {missing}"


def test_the_reference_tests_can_see_the_doc_and_the_registry():
    assert DOC.is_file()
    assert len(METHODS) >= 9, METHODS


# ---------------------------------------------------------------------------------------------------- methods

@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_every_registered_method_has_a_section(name):
    sections = [s for s in _sections(_doc_lines()) if s.name == name]
    assert len(sections) == 1, f"{DOC_PATH}: expected one heading ending in (`{name}`), found {len(sections)}"
    cls = registry.get_method(name)
    lines = _doc_lines()[sections[0].start:sections[0].end]
    impl = cls.__module__.replace(".", "/") + ".py"
    assert any(f"`{impl}`" in line for line in lines), f"section {sections[0].title!r} does not name `{impl}`"


@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_documented_config_defaults_equal_the_dataclass_defaults(name):
    lines = _doc_lines()
    (section,) = [s for s in _sections(lines) if s.name == name]
    cls = registry.get_method(name).Config
    blocks = _defaults_blocks(lines, section.start, section.end)
    path = _config_path(cls)
    assert path in blocks, (f"section {section.title!r} has no line 'Defaults of `{path}`' (found "
                            f"{sorted(blocks)})")
    documented = blocks[path]
    fields = [f.name for f in dataclasses.fields(cls)]
    assert sorted(documented) == sorted(fields), (f"{path}: the table lists {sorted(documented)}, the dataclass "
                                                  f"has {sorted(fields)}")
    assert not _mismatches(documented, cls)


def _all_blocks() -> dict[str, dict[str, object]]:
    return _defaults_blocks(_doc_lines()) if DOC.is_file() else {}


_BLOCKS = sorted(_all_blocks())


@pytest.mark.parametrize("cls_path", _BLOCKS, ids=_BLOCKS)
def test_every_documented_default_equals_the_code(cls_path):
    """Every defaults table, the method Configs' and the others (generation, selection, bootstrap)."""
    cls = _import(cls_path)
    assert dataclasses.is_dataclass(cls), f"{cls_path} is not a dataclass"
    assert not _mismatches(_all_blocks()[cls_path], cls)


def test_dwakd_ablation_table_lists_every_variant():
    from dwakd.methods.dwakd import VARIANTS

    lines = _doc_lines()
    (section,) = [s for s in _sections(lines) if s.title == "DWA-KD ablations"]
    listed = [m.group(1) for line in lines[section.start:section.end]
              if (m := re.match(r"^\|\s*`([a-z_]+)`\s*\|", line))]
    assert sorted(listed) == sorted(VARIANTS), f"table: {listed}, code: {list(VARIANTS)}"


# ---------------------------------------------------------------------------------------------------- the parser

def test_the_parser_catches_a_changed_default():
    lines = ["## X (`x`)", "", "Defaults of `baselines.uld.ULDConfig`:", "", "| option | default | source |",
             "|---|---|---|", "| `variant` | `\"dskd\"` | a |", "| `kd_rate` | `0.3` | b |",
             "| `temperature` | `1` | c |", "", "## Y"]
    (block,) = _defaults_blocks(lines).values()
    cls = _import("baselines.uld.ULDConfig")
    bad = _mismatches(block, cls)
    assert len(bad) == 2 and bad[0].startswith("kd_rate") and bad[1].startswith("temperature"), bad  # 1 ≠ 1.0
    (x, y) = _sections(lines)
    assert (x.title, x.name, x.end) == ("X", "x", 10) and (y.title, y.name) == ("Y", None)
