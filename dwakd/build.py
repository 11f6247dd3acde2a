"""Build the embedded pair: pre-train a teacher and a student base from scratch, then fine-tune the teacher.

Run by ``dwakd pretrain`` (and the workflow's ``build_pair`` target). The shipped models in
``dwakd/assets/<pair>/`` were made by exactly this code; ``dwakd ship`` stores a built pair there in bf16
with checksums and a model card.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dwakd.data import sha256_file
from dwakd.methods.base import build_config
from dwakd.methods.sft import SFT, SFTConfig
from dwakd.models import build_model, count_parameters, load_model, load_tokenizer
from dwakd.train import TrainConfig, Trainer


def arch_kwargs(spec: dict) -> tuple[str, dict]:
    spec = dict(spec)
    return spec.pop("arch"), spec


def train_sft(model, tokenizer, records: list[dict], train_cfg: TrainConfig, out_dir: Path, resume: bool) -> None:
    """Plain CE training of ``model`` (pre-training when ``train_cfg`` packs and trains on prompts)."""
    method = SFT(SFTConfig(), model)
    Trainer(method, model, None, tokenizer, None, train_cfg, out_dir).fit(records, resume=resume)


def pretrain(role: str, spec: dict, tokenizer_dir: Path, records: list[dict], train_over: dict, out_dir: Path,
             resume: bool = False, seed: int = 10) -> Path:
    """Create ``role`` ("teacher"/"student") from its config and pre-train it; returns ``out_dir/model``."""
    tok = load_tokenizer(tokenizer_dir)
    arch, kw = arch_kwargs(spec)
    torch.manual_seed(seed)
    model = build_model(arch, len(tok), tok, **kw)
    cfg = build_config(TrainConfig, {"seed": seed, **train_over}, f"pairs.build.{role}_pretrain")
    train_sft(model, tok, records, cfg, out_dir, resume)
    return out_dir / "model"


def finetune(model_dir: Path, records: list[dict], train_over: dict, out_dir: Path, resume: bool = False,
             seed: int = 10) -> Path:
    """SFT of a saved model on responses (the teacher's fine-tuning)."""
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    cfg = build_config(TrainConfig, {"seed": seed, **train_over}, "pairs.build.teacher_sft")
    train_sft(model, tok, records, cfg, out_dir, resume)
    return out_dir / "model"


def ship(teacher_dir: Path, student_dir: Path, dest: Path, card: str) -> None:
    """Store a built pair in ``dest`` (bf16 safetensors + tokenizers), with SHA256SUMS and a model card."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = {}
    for role, src in (("teacher", teacher_dir), ("student", student_dir)):
        m = load_model(src).to(torch.bfloat16)
        m.save_pretrained(tmp / role)
        load_tokenizer(src).save_pretrained(tmp / role)
        sizes[role] = count_parameters(m)
    (tmp / "MODEL_CARD.md").write_text(card.format(**{f"{k}_params": v for k, v in sizes.items()}))
    lines = [f"{sha256_file(f)}  {f.relative_to(tmp)}" for f in sorted(tmp.rglob("*"))
             if f.is_file() and f.name != "SHA256SUMS"]
    (tmp / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    (tmp / "sizes.json").write_text(json.dumps(sizes))
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it first to replace the shipped pair")
    os.replace(tmp, dest)
