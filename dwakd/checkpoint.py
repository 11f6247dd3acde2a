"""What a training run leaves on disk, and how a killed run continues with the result of an uninterrupted one.

Files under the run's folder ``out`` (written by process 0 only, each atomically: ``dwakd.atomic``):

* ``checkpoints/<fingerprint>/step-N/state.pt`` and ``latest``, naming the last complete one (``Checkpoints``):
  student, method, optimiser, schedule, RNG and the loop's state (step, epoch, micro-batch, selection); the
  fingerprint hashes the run's settings (``checkpoint_folder``), so a changed config never resumes from a stale
  checkpoint;
* ``train_log.jsonl``: one line per optimiser step and per evaluation, appended (``TrainLog``); a resumed run
  cuts it back to the lines its checkpoint had seen;
* ``model/``: the selected student (``Trainer.save_model``) with ``METHOD_STATE``, the method's own parameters
  (``save_method_state``, ``load_method_state``); ``selection.json``: every epoch's dev score and the best one
  (``select_epoch``, ``write_selection``).

A run killed at any moment leaves ``latest`` naming a complete checkpoint (or no ``latest``), a log whose extra
lines the resume drops, and the previous whole ``model/``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from dwakd.atomic import atomic_dir, atomic_write_json, atomic_write_text, replace_dir, tmp_path
from dwakd.errors import DataError
from dwakd.methods.base import Method


def checkpoint_folder(out: Path, method: Method, cfg) -> Path:
    """``out/checkpoints/<fingerprint>``: the first 12 hex digits of the sha256 of the method's name and config
    and the training settings ``cfg``; older checkpoints of other settings are left where they are."""
    fp = json.dumps({"method": method.name, "method_cfg": asdict(method.cfg) if is_dataclass(method.cfg) else {},
                     "train": asdict(cfg)}, sort_keys=True, default=str)
    return Path(out) / "checkpoints" / hashlib.sha256(fp.encode()).hexdigest()[:12]


def rng_state() -> dict:
    """The RNG state of torch (CPU and CUDA) and of ``random``."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def is_sharded(acc) -> bool:
    """FSDP or DeepSpeed: the student and its optimiser state are split over the processes of ``acc``."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


class Checkpoints:
    """The checkpoints of one run in ``folder`` (``checkpoint_folder``), of the modules the loop trains: the
    student and the method (``model``, accelerate's wrapper of both, under FSDP / DeepSpeed), the optimiser
    ``opt`` and the schedule ``sched``; ``acc`` is the run's ``Accelerator``. Every process calls ``save``,
    ``load`` and ``remove`` (they hold barriers)."""

    def __init__(self, folder: Path, acc, student, method, opt, sched):
        self.folder, self.acc = Path(folder), acc
        self.student, self.method, self.opt, self.sched = student, method, opt, sched

    def latest(self) -> Path | None:
        """The folder of the last complete checkpoint, or None."""
        f = self.folder / "latest"
        return self.folder / f.read_text().strip() if f.exists() else None

    def save(self, state: dict) -> None:
        """``step-N/state.pt`` (N = ``state["step"]``) written in a temporary folder and renamed into place, then
        ``latest`` (atomically) names it; only then the older checkpoints are removed."""
        acc, name = self.acc, f"step-{state['step']}"
        if is_sharded(acc):  # every process writes its shard (accelerate's format) into the temporary folder
            tmp = tmp_path(self.folder / name)
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp / "accelerate"))
            acc.wait_for_everyone()
            if acc.is_main_process:
                torch.save({"scheduler": self.sched.state_dict(), "state": state}, tmp / "state.pt")
                replace_dir(tmp, self.folder / name)
        elif acc.is_main_process:
            with atomic_dir(self.folder / name) as tmp:
                torch.save({"student": self.student.state_dict(), "method": self.method.state_dict(),
                            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                            "rng": rng_state(), "state": state}, tmp / "state.pt")
        if acc.is_main_process:
            atomic_write_text(self.folder / "latest", name)
            for old in self.folder.glob("step-*"):  # ``latest`` names a complete checkpoint: the older ones can go
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(self) -> dict | None:
        """Restore the modules, optimiser, schedule and RNG from the checkpoint ``latest`` names (every process
        loads it) and return its loop state; None without a checkpoint."""
        folder = self.latest()
        if folder is None:
            return None
        try:
            ck = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 (a damaged checkpoint: name it and what to do)
            raise DataError(f"{folder / 'state.pt'}: unreadable checkpoint ({type(e).__name__}); remove "
                            f"{self.folder} to train the run from the start") from None
        if is_sharded(self.acc):
            self.acc.load_state(str(folder / "accelerate"))
        else:
            self.student.load_state_dict(ck["student"])
            self.method.load_state_dict(ck["method"])
            self.opt.load_state_dict(ck["optimizer"])
            set_rng_state(ck["rng"])
        self.sched.load_state_dict(ck["scheduler"])
        return ck["state"]

    def remove(self) -> None:
        """A finished run is not resumed: its checkpoints have served their purpose."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.acc.wait_for_everyone()


class TrainLog:
    """``path`` (``train_log.jsonl``) of process 0, cut back to the lines the restored checkpoint had seen
    (``state["log_lines"]``; all of a fresh run's are dropped) and opened for appending; the other processes'
    log writes nothing. ``lines`` counts the lines the file holds, for the next checkpoint."""

    def __init__(self, path: Path, state: dict, main: bool):
        self.lines, self._file = 0, None
        if not main:
            return
        kept = []
        if path.exists() and state["step"] > 0:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if "log_lines" in state:
                kept = lines[:state["log_lines"]]
            else:  # a checkpoint written before ``log_lines``: the lines up to its step
                kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= state["step"]]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.lines = len(kept)
        self._file = open(path, "a")

    def write(self, rec: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
            self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ------------------------------------------------------------------------------ selection


def select_epoch(state: dict, score: float | None, select_by: str) -> tuple[dict, bool]:
    """Record epoch ``state["epoch"]``'s dev ``score`` (None: ``select_by: last``) in the run's ``state`` (its
    history, the best score and epoch so far). Returns the log line and whether this epoch's model is the one to
    keep: a higher score, or always without a score."""
    entry = {"step": state["step"], "epoch": state["epoch"], "dev_" + select_by: score}
    state["history"].append(entry)
    keep = score is None or state["best"] is None or score > state["best"]
    if keep:
        state["best"], state["best_epoch"] = score, state["epoch"]
    return entry, keep


def write_selection(out: Path, state: dict, select_by: str) -> None:
    """``out/selection.json``: the criterion, the best epoch and score, and every epoch's entry."""
    atomic_write_json(Path(out) / "selection.json", {"select_by": select_by, "best_epoch": state["best_epoch"],
                                                     "best": state["best"], "history": state["history"]})


# ------------------------------------------------------------------------------ method state


METHOD_STATE = "method_state.pt"  # in a saved model folder: the method's own trained parameters


def save_method_state(method: Method, model_dir: Path, state: dict | None = None) -> Path | None:
    """Write ``model_dir/METHOD_STATE`` (method name, config, ``state_dict`` — or ``state``, e.g. gathered from
    the processes) if the method has any state; the file holds tensors, strings and numbers only, so it loads
    with ``torch.load(weights_only=True)``."""
    state = method.state_dict() if state is None else state
    if not state:
        return None
    cfg = asdict(method.cfg) if is_dataclass(method.cfg) else {}
    path = Path(model_dir) / METHOD_STATE
    torch.save({"method": method.name, "config": json.loads(json.dumps(cfg, default=str)),
                "state": {k: v.detach().cpu() for k, v in state.items()}}, path)
    return path


def load_method_state(method: Method, model_dir: Path) -> bool:
    """Load the trained parameters ``Trainer.save_model`` stored with a student into ``method`` (built with
    the run's config on that student and the teacher). Returns False for a method without state; raises
    ``FileNotFoundError`` if the method has state but the folder has none (a model saved before the method's
    state was saved, or by another method), ``ValueError`` if the file belongs to another method."""
    path = Path(model_dir) / METHOD_STATE
    if not method.state_dict():
        return False
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; method {method.name!r} has trained parameters that "
                                f"`dwakd train` saves with the student — this model was saved without them "
                                f"(by an older version): retrain the run")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("method") != method.name:
        raise ValueError(f"{path}: holds the state of method {saved.get('method')!r}, not {method.name!r}")
    method.load_state_dict(saved["state"])
    return True
