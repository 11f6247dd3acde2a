"""Build the embedded pair: pre-train a teacher and a student base from scratch, then fine-tune the teacher.

Run by ``dwakd pretrain`` (the workflow's ``pretrain`` and ``teacher_sft`` rules). The shipped models in
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
from dwakd.methods.sft import SFT, SFTConfig
from dwakd.models import build_model, count_parameters, load_model, load_tokenizer
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer


# keys of a model entry in config.yaml that say how it is loaded or named, not how its architecture is built
LOAD_KEYS = {"hf_id", "path", "revision", "name", "tokenizer", "dtype", "gradient_checkpointing",
             "attn_implementation", "lora", "sft"}


def arch_kwargs(spec: dict) -> tuple[str, dict]:
    """``(model_type, config kwargs)`` of a self-built model's entry in config.yaml."""
    spec = {k: v for k, v in spec.items() if k not in LOAD_KEYS}
    return spec.pop("arch"), spec


def train_sft(model, tokenizer, records: list[dict], train_cfg: TrainConfig, out_dir: Path, resume: bool,
              dev_scorer=None) -> None:
    """Plain CE training of ``model`` (pre-training when ``train_cfg`` packs and trains on prompts)."""
    method = SFT(SFTConfig(), model)
    Trainer(method, model, None, tokenizer, None, train_cfg, out_dir, dev_scorer).fit(records, resume=resume)


def pretrain(role: str, spec: dict, tokenizer_dir: Path, records: list[dict], train_over: dict, out_dir: Path,
             resume: bool = False, seed: int = 10) -> Path:
    """Create ``role`` ("teacher"/"student") from its config and pre-train it; returns ``out_dir/model``."""
    tok = load_tokenizer(tokenizer_dir)
    arch, kw = arch_kwargs(spec)
    torch.manual_seed(seed)
    model = build_model(arch, len(tok), tok, **kw)
    cfg = from_dict(TrainConfig, {"seed": seed, **train_over}, f"pairs.build.{role}_pretrain")
    train_sft(model, tok, records, cfg, out_dir, resume)
    return out_dir / "model"


#: the student base's pre-training texts (``pairs.<pair>.build.student_text``) → how the model card names them
PRETRAIN_TEXTS = {
    "prompt_response": "prompt + response text",
    "prompts": "the prompts only (instruction and context; no response text: the responses are what the default "
               "run distils)",
}


def pretrain_records(records: list[dict], text: str = "prompt_response") -> list[dict]:
    """The pre-training records of ``pairs.<pair>.build.student_text``: the Dolly records as they are
    ("prompt_response": prompt and first response, packed) or their prompts alone ("prompts": instruction and
    context text with the template, each as a response to an empty prompt; no response text is seen)."""
    if text not in PRETRAIN_TEXTS:
        raise ValueError(f"build.student_text: expected one of {list(PRETRAIN_TEXTS)}, got {text!r}")
    if text == "prompts":
        return [{"prompt": "", "output": [r["prompt"]]} for r in records]
    return records


def finetune(model_dir: Path, records: list[dict], train_over: dict, out_dir: Path, resume: bool = False,
             seed: int = 10) -> Path:
    """SFT of a saved model on responses (the teacher's fine-tuning)."""
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    cfg = from_dict(TrainConfig, {"seed": seed, **train_over}, "pairs.build.teacher_sft")
    train_sft(model, tok, records, cfg, out_dir, resume)
    return out_dir / "model"


MODEL_CARD = """# The embedded pair `{pair_name}`

Made by dwakd from scratch on Dolly train (databricks-dolly-15k, CC BY-SA 3.0, MiniLLM processing), on CPU.
Weights are stored in bf16 and loaded as fp32.

| role | architecture | parameters | tokenizer |
|---|---|---|---|
| teacher | {teacher_arch} | {teacher_params:,} | {teacher_tokenizer} |
| student base | {student_arch} | {student_params:,} | {student_tokenizer} |

Recipe (config/config.yaml, `pairs.<pair>.build`):
- student base: pre-trained from random initialisation on {student_text}, packed blocks;
- teacher: pre-trained the same way, then fine-tuned on responses (SFT).

```
{build}
```

Rebuild: `snakemake --cores all --config rebuild_models=true -- ship`, then replace `dwakd/assets/<pair>/`
with the folder it writes. Check: `sha256sum -c SHA256SUMS` inside the folder.

Intended use: a small, fast, download-free pair for testing cross-tokenizer distillation code and for the
suite's default run. Not a useful language model.
"""


def build_pair_model(cfg: dict, pair: str | None, role: str, data: Path, out: Path, *, init: Path | None = None,
                     tokenizers: Path | None = None, dev: Path | None = None, resume: bool = False):
    """Build one model of ``pair`` into ``out`` (``dwakd pretrain``): ``role`` "teacher" or "student" pre-trains a
    self-built model from scratch on ``data`` with the tokenizer in ``tokenizers/<role>``; "teacher_sft"
    fine-tunes the self-built teacher in ``init``, or a published teacher with its ``sft`` settings (dev-set
    selection on ``dev`` when those ask for it). Writes ``out/resolved_config.yaml``; returns the model folder."""
    from dwakd import config as C
    from dwakd.data import load_jsonl
    from dwakd.hub import model_source
    from dwakd.run import load_pair_model
    from dwakd.train import make_dev_scorer, process_state

    name = C.pair_name(cfg, pair)
    p = C.pair(cfg, name)
    b = p.get("build", {})
    records = load_jsonl(data)
    out = Path(out)
    seed = C.profile(cfg)["train"].get("seed", 10)
    if role == "teacher_sft" and "arch" not in p["teacher"]:
        if "sft" not in p["teacher"]:
            raise C.ConfigError(f"pairs.{name}.teacher: no `sft` settings; this teacher is used as published")
        # under the profile's launcher: one process per GPU, each on its own device
        model, tok = load_pair_model(model_source(p["teacher"], f"pairs.{name}.teacher"), p["teacher"], "trained",
                                     process_state().device, f"pairs.{name}.teacher")
        tcfg = from_dict(TrainConfig, {"seed": seed, **p["teacher"]["sft"]}, f"pairs.{name}.teacher.sft")
        dev_scorer = None
        if tcfg.select_by != "last":
            if not dev:
                raise C.ConfigError(f"pairs.{name}.teacher.sft.select_by: {tcfg.select_by!r} needs --dev")
            dev_scorer = make_dev_scorer(load_jsonl(dev), tok, tcfg)
        train_sft(model, tok, records, tcfg, out, resume, dev_scorer)
        model = out / "model"
    elif role == "teacher_sft":
        if not init:
            raise C.ConfigError("dwakd pretrain --role teacher_sft: --init (the pre-trained teacher) is required")
        model = finetune(Path(init), records, b.get("teacher_sft", {}), out, resume, seed)
    else:
        if not tokenizers:
            raise C.ConfigError(f"dwakd pretrain --role {role}: --tokenizers is required")
        if role == "student":
            records = pretrain_records(records, b.get("student_text", "prompt_response"))
        model = pretrain(role, p[role], Path(tokenizers) / role, records, b.get(f"{role}_pretrain", {}), out,
                         resume, seed)
    if process_state().is_main_process:
        C.dump({"role": role, "pair": p, "data": str(data)}, out / "resolved_config.yaml")
    return model


def ship(teacher_dir: Path, student_dir: Path, dest: Path, card: str, pair: dict, name: str = "mini") -> None:
    """Store a built pair in ``dest`` (bf16 safetensors + tokenizers), with SHA256SUMS and a model card."""
    import yaml

    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it first to replace it")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {}
    for role, src in (("teacher", teacher_dir), ("student", student_dir)):
        m = load_model(src).to(torch.bfloat16)
        m.save_pretrained(tmp / role)
        tok = load_tokenizer(src)
        tok.save_pretrained(tmp / role)
        info.update({f"{role}_params": count_parameters(m), f"{role}_arch": m.config.model_type,
                     f"{role}_vocab": len(tok)})
    text = PRETRAIN_TEXTS[pair.get("build", {}).get("student_text", "prompt_response")]
    student_tok = f"SentencePiece-style BPE with byte fallback, {info['student_vocab']} tokens (`▁` marker)"
    teacher_tok = (f"the student's ({info['teacher_vocab']} tokens)" if pair.get("tokenizers", {}).get("shared")
                   else f"byte-level BPE, {info['teacher_vocab']} tokens (`Ġ` marker)")
    (tmp / "MODEL_CARD.md").write_text(card.format(build=yaml.safe_dump(pair.get("build", {})), student_text=text,
                                                   pair_name=name, teacher_tokenizer=teacher_tok,
                                                   student_tokenizer=student_tok, **info))
    (tmp / "sizes.json").write_text(json.dumps(info, indent=2))
    lines = [f"{sha256_file(f)}  {f.relative_to(tmp)}" for f in sorted(tmp.rglob("*"))
             if f.is_file() and f.name != "SHA256SUMS"]
    (tmp / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    os.replace(tmp, dest)
