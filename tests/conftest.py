"""Shared fixtures: a tiny offline pair (tokenizers trained here, models built from configs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dwakd.data import SHIPPED_DATA, load_jsonl
from dwakd.models import build_model
from dwakd.tokenization import train_pair

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def dolly_small() -> list[dict]:
    return load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[:300]


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, dolly_small) -> Path:
    """``teacher/`` (Qwen2) and ``student_base/`` (Llama) with their own tokenizers, saved like the workflow's."""
    root = tmp_path_factory.mktemp("pair")
    train_pair(dolly_small, root / "tok", teacher_vocab=700, student_vocab=600)
    from dwakd.models import load_tokenizer

    torch.manual_seed(0)
    specs = {
        "teacher": ("qwen2", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=128, max_position_embeddings=256)),
        "student_base": ("llama", dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, intermediate_size=96, max_position_embeddings=256)),
    }
    for name, (arch, kw) in specs.items():
        tok = load_tokenizer(root / "tok" / ("teacher" if name == "teacher" else "student"))
        model = build_model(arch, len(tok), tok, **kw)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny profile's real workflow, run ONCE per test session (minutes; only tests marked ``slow`` use it):
    ``snakemake --cores 2 -d <folder> --config profile=tiny``. Returns the folder (outputs under
    ``results/tiny/``); tests may add to it but must not change what other tests read."""
    folder = tmp_path_factory.mktemp("tiny_run")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", "-d",
                        str(folder), "--config", "profile=tiny"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": path})
    if r.returncode != 0:
        raise AssertionError(f"the tiny workflow failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return folder


@pytest.fixture
def interrupted_fit(monkeypatch):
    """``interrupted_fit(trainer, records, n)``: ``trainer.fit(records)`` stopped by a ``KeyboardInterrupt`` (a
    user's Ctrl-C) at its n-th micro-step; ``Trainer.micro_step`` is restored afterwards."""
    from dwakd.train import Trainer

    def run(trainer, records, n: int) -> None:
        orig, calls = Trainer.micro_step, {"n": 0}

        def dying(self, batch):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return orig(self, batch)

        monkeypatch.setattr(Trainer, "micro_step", dying)
        try:
            with pytest.raises(KeyboardInterrupt):
                trainer.fit(records)
        finally:
            monkeypatch.setattr(Trainer, "micro_step", orig)

    return run
