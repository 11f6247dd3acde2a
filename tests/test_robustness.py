"""A training run killed at any point resumes from its last complete checkpoint and ends as an uninterrupted run.

The killed runs are real processes (this file run as a script: ``Trainer.fit`` of DSKD-CMA, whose projectors and
their optimiser state are checkpointed too) stopped with SIGKILL: from outside during an epoch, and from inside
(``inject_fault``, by monkeypatching) while a checkpoint's ``state.pt`` or the ``model/`` folder is half
written. Each is then resumed (``fit(resume=True)``, what ``dwakd train --resume`` calls) and its log, selection,
model and method state must equal the uninterrupted run's; a half-written checkpoint or model is never taken.
A non-finite loss or gradient norm stops the run with the last good checkpoint on disk, and a resume starts from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
N_RECORDS = 12  # 3 steps of 4 per epoch, 3 epochs: steps 1..9; checkpoints at 2, 3, 4, 6, 6 (epoch end), 8
NOT_COMPARED = ("step_time_s", "tokens_per_s", "peak_mem_mb")


def make_trainer(pair: Path, out: Path, **over):
    from dwakd.models import load_model, load_tokenizer
    from dwakd.registry import get_method
    from dwakd.train import TrainConfig, Trainer

    cls = get_method("dskd_cma")
    student, stok = load_model(pair / "student_base"), load_tokenizer(pair / "student_base")
    teacher, ttok = load_model(pair / "teacher").requires_grad_(False), load_tokenizer(pair / "teacher")
    torch.manual_seed(0)
    method = cls(cls.Config(), student, teacher, stok, ttok)
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 3e-3, "max_len": 96, "max_prompt_len": 48,
                         "select_by": "last", "save_every_steps": 2, "progress": False, **over})
    return Trainer(method, student, teacher, stok, ttok, cfg, out)


def records() -> list[dict]:
    from dwakd.data import SHIPPED_DATA, load_jsonl

    return load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[:N_RECORDS]


def dying_inside(atomic_dir, when, cut):
    """``atomic_dir`` that, for a destination ``when(dest)`` accepts, cuts the file ``cut(tmp)`` to half its size
    once the body has written the temporary folder ``tmp``, and SIGKILLs this process before ``tmp`` is renamed."""
    @contextlib.contextmanager
    def wrapped(dest, *args, **kwargs):
        with atomic_dir(dest, *args, **kwargs) as tmp:
            yield tmp
            if when(Path(dest)):
                partial = cut(tmp)
                os.truncate(partial, partial.stat().st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)

    return wrapped


def inject_fault(mp: pytest.MonkeyPatch, fault: str) -> None:
    """Monkeypatch the training code of this process (``run_killed``'s child) so that it meets ``fault``:
    ``checkpoint@N``: SIGKILL inside the checkpoint writer of step N, ``state.pt`` half written in the temporary
    folder; ``model@N``: SIGKILL inside ``Trainer.save_model`` at step N, the student half written in the
    temporary folder; ``sleep@S``: S seconds of sleep after every step's log line (so that a test can kill the run
    from outside at a moment of its choosing)."""
    from dwakd import checkpoint, train

    what, _, arg = fault.partition("@")
    if what == "sleep":
        write = checkpoint.TrainLog.write

        def write_and_sleep(self, rec):
            write(self, rec)
            if "loss" in rec:
                time.sleep(float(arg))

        mp.setattr(checkpoint.TrainLog, "write", write_and_sleep)
    elif what == "checkpoint":
        mp.setattr(checkpoint, "atomic_dir", dying_inside(checkpoint.atomic_dir, lambda d: d.name == f"step-{arg}",
                                                          lambda tmp: tmp / "state.pt"))
    elif what == "model":
        at = {}
        end_epoch = train.Trainer.end_epoch

        def noting_the_step(self, state):
            at["step"] = state["step"]
            end_epoch(self, state)

        mp.setattr(train.Trainer, "end_epoch", noting_the_step)
        mp.setattr(train, "atomic_dir", dying_inside(train.atomic_dir, lambda dest: at.get("step") == int(arg),
                                                     lambda tmp: next(tmp.glob("*.safetensors"))))
    else:
        raise ValueError(f"unknown fault {fault!r}")


def run_killed(pair: Path, out: Path, fault: str, kill_after_steps: int | None = None) -> None:
    """Run the training in a child process with ``fault`` injected (``inject_fault``); it must die of SIGKILL: its
    own (a fault point) or ours, sent once the log holds ``kill_after_steps`` step lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([sys.executable, __file__, str(pair), str(out), fault], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after_steps is not None:
        log = out / "train_log.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and sum('"loss"' in ln for ln in log.read_text().splitlines()) >= kill_after_steps:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode}):\n{err[-3000:]}"


def read_log(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in NOT_COMPARED}
            for ln in (out / "train_log.jsonl").read_text().splitlines()]


def latest(out: Path) -> str | None:
    found = list((out / "checkpoints").glob("*/latest"))
    assert len(found) <= 1
    return found[0].read_text() if found else None


def assert_same_run(out: Path, ref: Path) -> None:
    from safetensors.torch import load_file

    a, b = read_log(out), read_log(ref)
    assert [(r["step"], "loss" in r) for r in a] == [(r["step"], "loss" in r) for r in b]  # no line twice
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert v == (pytest.approx(y[k], rel=1e-6, abs=1e-9) if isinstance(v, float) else y[k]), (k, x, y)
    assert json.loads((out / "selection.json").read_text()) == json.loads((ref / "selection.json").read_text())
    ma, mb = load_file(out / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
    assert ma.keys() == mb.keys() and all(torch.allclose(ma[k], mb[k], atol=1e-6) for k in ma)
    sa, sb = (torch.load(d / "model" / "method_state.pt", weights_only=True)["state"] for d in (out, ref))
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert latest(out) is None and not list(out.rglob("*.tmp"))  # finished: checkpoints gone, nothing partial


@pytest.fixture(scope="module")
def reference(tiny_pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robust") / "uninterrupted"
    make_trainer(tiny_pair, out).fit(records())
    assert sum("loss" in r for r in read_log(out)) == 9
    return out


def test_sigkill_during_an_epoch_resumes_to_the_same_result(tiny_pair, reference, tmp_path):
    out = tmp_path / "run"
    run_killed(tiny_pair, out, "sleep@0.3", kill_after_steps=5)  # killed in epoch 2, after its step-4 checkpoint
    assert latest(out) == "step-4"
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4, 5]  # step 5 is past the checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        make_trainer(tiny_pair, out).fit(records())
    make_trainer(tiny_pair, out).fit(records(), resume=True)
    assert_same_run(out, reference)  # the log's step-5 line was dropped and written again by the resumed run


def test_sigkill_while_writing_a_checkpoint_never_takes_the_partial_one(tiny_pair, reference, tmp_path):
    out = tmp_path / "run"
    run_killed(tiny_pair, out, "checkpoint@4")  # state.pt of step 4 half written in its temporary folder
    ck = next((out / "checkpoints").iterdir())
    partial = ck / "step-4.tmp" / "state.pt"
    assert partial.exists() and not (ck / "step-4").exists()
    with pytest.raises(Exception):
        torch.load(partial, weights_only=False)  # it really is cut
    assert latest(out) == "step-3"  # the last complete checkpoint (end of epoch 1), which the resume loads
    make_trainer(tiny_pair, out).fit(records(), resume=True)
    assert_same_run(out, reference)


def test_sigkill_while_writing_the_model_keeps_the_previous_model(tiny_pair, reference, tmp_path):
    from dwakd.models import load_model

    out = tmp_path / "run"
    run_killed(tiny_pair, out, "model@6")  # end of epoch 2: the student half written in model.tmp/
    assert (out / "model.tmp").exists()
    load_model(out / "model")  # model/ is epoch 1's, whole
    assert json.loads((out / "selection.json").read_text())["best_epoch"] == 0
    # the step-6 checkpoint was written before the epoch's evaluation line: the resumed run must not log it twice
    assert latest(out) == "step-6" and [r for r in read_log(out) if "dev_last" in r][-1]["epoch"] == 1
    make_trainer(tiny_pair, out).fit(records(), resume=True)
    assert_same_run(out, reference)


def test_non_finite_loss_keeps_the_last_good_checkpoint_and_resume_starts_there(tiny_pair, reference, tmp_path,
                                                                                monkeypatch):
    from baselines.dskd_cma import DSKDCMA

    out = tmp_path / "run"
    t = make_trainer(tiny_pair, out)
    loss = DSKDCMA.loss
    calls = {"n": 0}

    def nan_at_step_5(self, batch, s, t_):
        calls["n"] += 1
        value, logs = loss(self, batch, s, t_)
        return (value * float("nan"), logs) if calls["n"] == 5 else (value, logs)

    monkeypatch.setattr(DSKDCMA, "loss", nan_at_step_5)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 5 .*'kd_stu'.*batch ids \[\d.*"
                                                 r"step-4, is kept: rerun with --resume"):
        t.fit(records())
    monkeypatch.setattr(DSKDCMA, "loss", loss)
    assert latest(out) == "step-4" and [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4]
    make_trainer(tiny_pair, out).fit(records(), resume=True)
    assert_same_run(out, reference)


def test_non_finite_gradient_norm_stops_the_run(tiny_pair, tmp_path, monkeypatch):
    from dwakd.train import Trainer

    out = tmp_path / "run"
    t = make_trainer(tiny_pair, out, epochs=1)
    micro_step = Trainer.micro_step
    calls = {"n": 0}

    def inf_grad_at_step_2(self, batch):
        calls["n"] += 1
        value, logs = micro_step(self, batch)
        if calls["n"] == 2:  # a finite loss whose gradient is infinite
            value.register_hook(lambda g: g * float("inf"))
        return value, logs

    monkeypatch.setattr(Trainer, "micro_step", inf_grad_at_step_2)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm (inf|nan) \(loss \d.*\) at step 2 "
                                                 r".*no checkpoint was written yet"):
        t.fit(records())
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1]


def test_atomic_helpers(tmp_path):
    from dwakd.atomic import atomic_dir, atomic_write_json, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "a.txt").read_text() == "one" and json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    for content in ("old", "new"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text(content)
    assert (tmp_path / "d" / "f").read_text() == "new"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("partial")
        raise RuntimeError
    assert (tmp_path / "d" / "f").read_text() == "new"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "d"]  # no temporary left


if __name__ == "__main__":
    with pytest.MonkeyPatch.context() as mp:
        inject_fault(mp, sys.argv[3])
        make_trainer(Path(sys.argv[1]), Path(sys.argv[2])).fit(records())
