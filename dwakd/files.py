"""Reading the suite's files so that every fault is one line naming the file (and line) and how to regenerate it.

Readers of data, result and model files go through here (torch-free):

* ``iter_jsonl_lines(path)``: the decoded lines of a ``.jsonl`` or ``.jsonl.gz`` file; a byte that is not UTF-8
  or a truncated / corrupt gzip stream raises ``DataError`` ``<file>:<line>: ...; regenerate it: ...``;
* ``read_json(path)``: one JSON document (a result, a map); truncation and parse errors name the file, line and
  column;
* ``regenerate_hint(path)``: what to do about a damaged file: restore a shipped file from the repository, or
  rerun the workflow job that wrote it (``snakemake --cores all -f <path>``);
* model folders: ``write_checksums(folder)`` writes ``CHECKSUMS`` (``checksums.json``: the size and sha256 of
  every file) when a model is saved, ``verify_model_dir(folder)`` checks them when it is loaded
  (``dwakd.models.load_model`` / ``load_tokenizer``) and ``quick_check(folder)`` checks only names and sizes
  (what the Snakefile runs at start-up over the trained runs). A damaged or incomplete folder raises
  ``DamagedModelError`` naming the folder, the file and the command that redoes it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from dwakd.errors import DataError

CHECKSUMS = "checksums.json"  # in a saved model folder: {"files": {name: {"bytes", "sha256"}}, "redo": ...}
RECEIPT = "model.sha256"  # beside a trained run's model/ (the train rule's output): sha256 of model/CHECKSUMS

ASSETS = Path(__file__).resolve().parent / "assets"


class DamagedModelError(DataError):
    """A saved model folder whose files do not match the checksums written when it was saved."""


def regenerate_hint(path: str | os.PathLike) -> str:
    """How to get a good copy of ``path``: a shipped file (``dwakd/assets``) from the repository, any other
    (a workflow output) by forcing the job that writes it."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(ASSETS.parent.parent)
        if str(rel).startswith("dwakd/assets"):
            return f"restore the shipped file: git checkout -- {rel} (or reinstall the package)"
    except ValueError:
        pass
    return f"regenerate it: snakemake --cores all -f {p} (with this run's --config / --configfile)"


def _gzip_error(e: BaseException) -> bool:
    return isinstance(e, (EOFError, gzip.BadGzipFile, zlib.error)) or (
        isinstance(e, OSError) and "gzip" in str(e).lower())


def iter_jsonl_lines(path: str | os.PathLike, redo: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file (``.gz``: gzip-compressed). A line that is not
    UTF-8 or a truncated compressed stream raises ``DataError`` naming the file and line."""
    path = Path(path)
    redo = redo or regenerate_hint(path)
    opener = gzip.open if str(path).endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                                    f"{e.start + 1} of the line); {redo}") from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 (gzip's errors come in several classes)
        if not _gzip_error(e):
            raise
        raise DataError(f"{path}:{lineno + 1}: truncated or corrupt compressed file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}) after {lineno} complete line(s); "
                        f"{redo}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", redo: str | None = None):
    """The JSON document in ``path``; a missing, non-UTF-8, truncated or malformed file raises ``DataError``
    ``<file>:<line>:<column>: <what> ...; <how to regenerate it>``."""
    path = Path(path)
    redo = redo or regenerate_hint(path)
    if not path.exists():
        raise DataError(f"{path}: missing {what}; {redo}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x}); {redo}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        kind = "truncated" if e.pos >= len(text.rstrip()) - 1 or "Unterminated" in e.msg else "malformed"
        raise DataError(f"{path}:{e.lineno}:{e.colno}: {kind} {what}: {e}; {redo}") from None


# ------------------------------------------------------------------------------------------ model folders


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS and not p.name.endswith(".tmp"))


def write_checksums(folder: str | os.PathLike, redo: str | None = None) -> Path:
    """``folder/checksums.json``: the size and sha256 of every file of ``folder`` (recursively), and ``redo``, the
    command that writes the folder again (named when it is found damaged). Written atomically."""
    from dwakd.atomic import atomic_write_json

    folder = Path(folder)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in _files(folder)}
    path = folder / CHECKSUMS
    atomic_write_json(path, {"format": 1, "files": files, **({"redo": redo} if redo else {})})
    return path


def set_redo(folder: str | os.PathLike, redo: str) -> None:
    """Record in ``folder/checksums.json`` the command that redoes the folder (the files are not hashed again)."""
    from dwakd.atomic import atomic_write_json

    path = Path(folder) / CHECKSUMS
    data = json.loads(path.read_text())
    data["redo"] = redo
    atomic_write_json(path, data)


def _manifest(folder: Path) -> dict | None:
    path = folder / CHECKSUMS
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("files")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedModelError(f"{path}: unreadable checksums ({type(e).__name__}); the model folder {folder} "
                                f"cannot be checked; {_redo(folder, {})}") from None
    return data


def _redo(folder: Path, data: dict) -> str:
    redo = data.get("redo") if isinstance(data, dict) else None
    if redo:
        return f"redo it: {redo}"
    if folder.name == "model" and (folder.parent / "selection.json").exists():  # a trained run's model
        return f"retrain it: snakemake --cores all -f {folder.parent / RECEIPT} (with this run's --config)"
    return f"rerun the job that wrote it: snakemake --cores all -f {folder} (with this run's --config)"


def folder_redo(folder: str | os.PathLike) -> str:
    """How to redo a model folder: the command its checksums record, else the workflow target that writes it."""
    folder = Path(folder)
    try:
        data = _manifest(folder) or {}
    except DamagedModelError:
        data = {}
    return _redo(folder, data)


def quick_check(folder: str | os.PathLike) -> str | None:
    """What is wrong with a saved model folder by the names and sizes in its ``checksums.json`` (a missing or
    truncated file), as one line; None when it looks whole or carries no checksums. Cheap: no file is read."""
    folder = Path(folder)
    try:
        data = _manifest(folder)
    except DamagedModelError as e:
        return str(e)
    if data is None:
        return None
    for name, want in data["files"].items():
        f = folder / name
        if not f.exists():
            return f"{f}: missing (listed in {folder / CHECKSUMS}); the model folder is damaged; {_redo(folder, data)}"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return (f"{f}: {size} bytes, {want.get('bytes')} when saved (listed in {folder / CHECKSUMS}); the model "
                    f"folder is damaged; {_redo(folder, data)}")
    return None


_VERIFIED: dict[tuple, bool] = {}


def verify_model_dir(folder: str | os.PathLike) -> bool:
    """Check every file listed in ``folder/checksums.json`` (presence, size, sha256); ``DamagedModelError`` names
    the first bad file and how to redo the folder. False for a folder without checksums (a published model, or
    one saved before they were written), True when checked. Each folder is hashed once per process."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.exists():
        return False
    problem = quick_check(folder)
    if problem:
        raise DamagedModelError(problem)
    data = _manifest(folder)
    stats = [(folder / n).stat() for n in sorted(data["files"])]  # a file changed since it was hashed: again
    key = (str(folder.resolve()), path.stat().st_mtime_ns, tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats))
    if key in _VERIFIED:
        return True
    for name, want in data["files"].items():
        got = sha256_file(folder / name)
        if got != want.get("sha256"):
            raise DamagedModelError(f"{folder / name}: sha256 {got[:16]}… differs from the one written when the "
                                    f"model was saved ({folder / CHECKSUMS}); the model folder is damaged; "
                                    f"{_redo(folder, data)}")
    _VERIFIED[key] = True
    return True


def receipt_text(model_dir: str | os.PathLike) -> str:
    """The content of a trained run's receipt (``RECEIPT``, beside ``model/``): the sha256 of its checksums file,
    in ``sha256sum`` format (``sha256sum -c model.sha256`` in the run folder checks it)."""
    model_dir = Path(model_dir)
    return f"{sha256_file(model_dir / CHECKSUMS)}  {model_dir.name}/{CHECKSUMS}\n"


# ------------------------------------------------------------------------------------------ trained runs


def staging_dir(out: str | os.PathLike) -> Path:
    """Where ``dwakd train --out OUT`` trains: the sibling ``OUT.partial/`` (checkpoints, log, selection, model
    of the attempt); ``OUT/`` keeps the last complete result until the attempt succeeds (``publish_run``)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def prepare_staging(out: str | os.PathLike) -> Path:
    """``staging_dir(out)``, created; the checkpoints and log of a run interrupted before runs were staged
    (``OUT/checkpoints``) are moved into it, so ``--resume`` continues them."""
    out = Path(out)
    staging = staging_dir(out)
    staging.mkdir(parents=True, exist_ok=True)
    if (out / "checkpoints").is_dir() and not (staging / "checkpoints").exists():
        os.replace(out / "checkpoints", staging / "checkpoints")
        if (out / "train_log.jsonl").exists() and not (staging / "train_log.jsonl").exists():
            import shutil

            shutil.copy2(out / "train_log.jsonl", staging / "train_log.jsonl")
    return staging


def publish_run(staging: str | os.PathLike, out: str | os.PathLike, redo: str) -> Path:
    """Put a finished attempt in place of the run's last result, all of it at once: ``model/`` (its checksums get
    ``redo``), ``train_log.jsonl``, ``selection.json``, ``resolved_config.yaml`` and the receipt ``RECEIPT``
    (what the workflow's train rule waits for) are in ``staging``, which is swapped with ``out``
    (``dwakd.atomic.replace_dir``). Leftover checkpoints (of other settings) are not published. Returns
    ``out/RECEIPT``."""
    import shutil

    from dwakd.atomic import atomic_write_text, replace_dir

    staging, out = Path(staging), Path(out)
    model = staging / "model"
    if not (model / CHECKSUMS).exists():
        raise DataError(f"{model}: no complete model to publish (no {CHECKSUMS}); {out} is left as it was")
    set_redo(model, redo)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    atomic_write_text(staging / RECEIPT, receipt_text(model))
    replace_dir(staging, out)
    return out / RECEIPT
