"""The paper profile's grid (dry runs), the cluster profiles, and the Hugging Face cache path of hub models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dwakd import config as C
from dwakd.errors import ConfigError
from dwakd.hub import model_source

ROOT = Path(__file__).resolve().parent.parent


def _snakemake(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args], capture_output=True,
                       text=True, env=env, cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-3000:])
    return r


def _jobs(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):].split("\n")[3:]
    counts = {}
    for line in table:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper")
    r = _snakemake("-n", "-p", "--cores", "8", "-d", str(d), "--config", "profile=paper")
    return r.stdout


def test_paper_dry_run_lists_the_full_grid(paper_dry_run):
    cfg = C.load(None, {"profile": "paper"})
    prof = C.profile(cfg)
    pairs, runs = prof["pairs"], C.table_runs(prof)
    assert len(pairs) == 5 and len(runs) == 17  # 9 main-table runs + 10 ablation rows, 2 shared
    # the same-vocabulary table's pair (DSKD Table 1): SFT + Vanilla KD and DSKD × 6 divergences, its table only
    sv_pair, sv_runs = C.same_vocab(prof)
    assert sv_pair == "gpt2-1.5b_gpt2-120m" and sv_pair not in pairs and len(sv_runs) == 13
    jobs = _jobs(paper_dry_run)
    assert jobs["train"] == len(pairs) * len(runs) + len(sv_runs)
    assert jobs["eval"] == len(pairs) * (len(runs) + 1) + len(sv_runs)  # + the copy floor (main tables only)
    # once per teacher, 5 sets
    assert jobs["teacher_eval"] == 4 and jobs["teacher_eval_copy"] == (len(pairs) + 1) * 5
    assert jobs["report"] == 2 * len(pairs) and jobs["figures"] == len(pairs) and jobs["models"] == len(pairs) + 1
    assert jobs["same_vocab_report"] == 1 and f"results/paper/{sv_pair}/tables/same_vocab.md" in paper_dry_run
    sv_trained = set(re.findall(rf"results/paper/{re.escape(sv_pair)}/runs/([^/\s]+)/", paper_dry_run))
    assert sv_trained == set(sv_runs)  # nothing of the main or ablation tables on this pair
    assert f"results/paper/{sv_pair}/tables/main.md" not in paper_dry_run
    assert jobs["data_unni"] == 1  # UnNI is one of the paper profile's sets
    for p in pairs:
        for r in runs:
            assert f"results/paper/{p}/runs/{r}/model" in paper_dry_run
        assert f"results/paper/{p}/tables/main.md" in paper_dry_run


def test_teacher_outputs_are_computed_once_per_teacher_and_shared(paper_dry_run):
    jobs = _jobs(paper_dry_run)
    # three published teachers of the main tables (Qwen1.5-1.8B, Mistral-7B, Qwen2.5-7B-Instruct): one SFT, one set
    # of samples and one evaluation each; GPT2-1.5B (the same-vocabulary table's): an SFT and an evaluation
    assert jobs["hub_teacher_sft"] == 4 and jobs["generate"] == 3 and jobs["teacher_eval"] == 4
    # four vocabulary maps: the two GPT2 students of Qwen1.5 share the GPT-2 tokenizer
    assert jobs["vocab_map"] == 4
    cmds = [c for c in paper_dry_run.split("\n") if " train --config " in c]
    seqkd = [c for c in cmds if "--run seqkd " in c]
    gen = "results/paper/teachers/Qwen--Qwen1.5-1.8B/generated/teacher_train.jsonl"
    assert sum(f"--train-file {gen}" in c for c in seqkd) == 2
    vmap = "results/paper/vocab_maps/Qwen--Qwen1.5-1.8B__openai-community--gpt2.json"
    assert sum(f"--vocab-map {vmap}" in c for c in cmds) == 2


def test_paper_training_jobs_run_under_accelerate_with_their_pair(paper_dry_run):
    cmds = [c for c in paper_dry_run.split("\n") if " train --config " in c]
    assert cmds and all("accelerate launch --config_file config/accelerate/ddp.yaml -m dwakd.cli train" in c
                        for c in cmds)
    assert all(re.search(r"--pair \S+ --run \S+", c) for c in cmds)
    sft = [c for c in paper_dry_run.split("\n") if "--role teacher_sft" in c]
    assert len(sft) == 4 and all("--dev " in c for c in sft)


def test_paper_pairs_hold_the_published_settings():
    cfg = C.load(None, {"profile": "paper"})
    pairs = cfg["pairs"]
    tiny = pairs["mistral-7b_tinyllama-1.1b"]
    assert tiny["student"]["lora"] == {"r": 256, "alpha": 8, "dropout": 0.1}  # DSKD scripts (docs/paper.md)
    assert tiny["teacher"]["lora"] == {"r": 256, "alpha": 8, "dropout": 0.1}
    for name in C.profile(cfg)["pairs"]:
        p = pairs[name]
        assert p["teacher"]["dtype"] == "bfloat16" and p["student"]["gradient_checkpointing"] is True
        assert "/" in p["teacher"]["hf_id"] and "/" in p["student"]["hf_id"]
    from dwakd.run import build_run

    t = build_run(cfg, "dwakd", "mistral-7b_tinyllama-1.1b").train_config
    assert (t.lr, t.epochs, t.batch_size * t.grad_accum) == (1e-3, 10, 32)  # the pair's overrides win
    t = build_run(cfg, "dwakd", "qwen1.5-1.8b_gpt2-120m").train_config
    assert (t.lr, t.epochs, t.batch_size * t.grad_accum, t.dev_limit) == (5e-4, 20, 32, 0)
    # the same-vocabulary pair: GPT2-1.5B fine-tuned like MiniLLM's sft_xlarge.sh, the students as DSKD's
    # scripts/gpt2/{vanilla_kd,dskd}_gpt2_base.sh (lr 5e-4, 20 epochs, batch 32, projector lr 1e-3, α 0.5, τ 2)
    sv = pairs["gpt2-1.5b_gpt2-120m"]
    assert sv["teacher"]["hf_id"] == "openai-community/gpt2-xl" and sv["student"]["hf_id"] == "openai-community/gpt2"
    assert sv["teacher"]["tokenizer"] == sv["student"]["tokenizer"] == "openai-community/gpt2"
    s = sv["teacher"]["sft"]
    assert (s["lr"], s["epochs"], s["batch_size"] * s["grad_accum"], s["warmup_ratio"]) == (5e-5, 10, 32, 0.0)
    for run in ("vanilla_kd_akl", "dskd_fkl"):
        r = build_run(cfg, run, "gpt2-1.5b_gpt2-120m")
        t = r.train_config
        assert (t.lr, t.epochs, t.batch_size * t.grad_accum, t.projector_lr) == (5e-4, 20, 32, 1e-3)
        assert (r.method_config.kd_rate, r.method_config.temperature) == (0.5, 2.0)


def test_a_profile_with_several_pairs_needs_pair_on_the_command_line():
    cfg = C.load(None, {"profile": "paper"})
    with pytest.raises(ConfigError, match="choose one with --pair"):
        C.pair(cfg)
    with pytest.raises(ConfigError, match="--pair nope"):
        C.pair(cfg, "nope")
    assert C.pair_name(C.load(None, {"profile": "mini"})) == "mini"


def test_pairs_sharing_a_teacher_name_must_share_its_settings():
    cfg = C.load(None, {"profile": "paper"})
    cfg["pairs"]["qwen1.5-1.8b_gpt2-340m"]["teacher"] = {**cfg["pairs"]["qwen1.5-1.8b_gpt2-340m"]["teacher"],
                                                        "dtype": "float32"}
    with pytest.raises(ConfigError, match="give one of them another `name`"):
        C.check(cfg)


def test_a_profile_lists_its_pairs_even_one():
    with pytest.raises(ConfigError, match=r"profiles\.mini\.pair: unknown key; expected one of: ablation_in_all, "):
        C.load(None, {"profiles": {"mini": {"pair": "mini"}}})
    with pytest.raises(ConfigError, match=r"profiles\.mini\.pairs: expected a list, got 'mini'"):
        C.load(None, {"profiles": {"mini": {"pairs": "mini"}}})


def test_gpu_small_profile_is_a_self_built_pair_of_tens_of_millions_of_parameters(tmp_path):
    cfg = C.load(None, {"profile": "gpu-small"})
    p = C.pair(cfg)
    assert p["shipped"] is None and p["teacher"]["arch"] and p["student"]["arch"]
    from transformers import AutoConfig

    from dwakd.build import arch_kwargs

    sizes = {}
    for role, vocab in (("teacher", p["tokenizers"]["teacher_vocab"]), ("student", p["tokenizers"]["student_vocab"])):
        arch, kw = arch_kwargs(p[role])
        c = AutoConfig.for_model(arch, vocab_size=vocab, **kw)
        d, n, f = c.hidden_size, c.num_hidden_layers, c.intermediate_size
        kv = d * c.num_key_value_heads // c.num_attention_heads
        sizes[role] = vocab * d + n * (2 * d * d + 2 * d * kv + 3 * d * f)
    assert 10e6 < sizes["student"] < sizes["teacher"] < 100e6
    jobs = _jobs(_snakemake("-n", "--cores", "4", "-d", str(tmp_path), "--config", "profile=gpu-small").stdout)
    assert jobs["train"] == len(C.table_runs(C.profile(cfg))) and jobs["pretrain"] == 2 and jobs["teacher_sft"] == 1


def test_gpu_and_slurm_snakemake_profiles(tmp_path):
    gpu = yaml.safe_load((ROOT / "workflow/profiles/gpu/config.yaml").read_text())
    assert gpu["resources"] == ["gpu=1"]
    r = _snakemake("-n", "--workflow-profile", str(ROOT / "workflow/profiles/gpu"), "-d", str(tmp_path / "g"),
                   "--config", "profile=tiny")
    assert "train" in _jobs(r.stdout)
    pytest.importorskip("snakemake_executor_plugin_slurm")
    r = _snakemake("-n", "--workflow-profile", str(ROOT / "workflow/profiles/slurm"), "-d", str(tmp_path / "s"),
                   "--config", "profile=paper")
    train = [b for b in r.stdout.split("\n\n") if "rule train:" in b]
    assert train and all("gpu=4" in b for b in train)


# ----------------------------------------------------------------------------- hub models, offline


def _fake_hub_cache(home: Path, repo: str, model_dir: Path) -> str:
    """Lay ``model_dir``'s files out as the Hugging Face cache holds ``repo`` at a commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return commit


def test_hub_models_come_from_the_hugging_face_cache_offline(tiny_pair, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    _fake_hub_cache(home, "tiny-org/tiny-student", tiny_pair / "student_base")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    folder = model_source({"hf_id": "tiny-org/tiny-student"}, "pairs.x.student")
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    from dwakd.models import load_model

    assert load_model(folder).config.model_type == "llama"
    with pytest.raises(ConfigError, match=r"pairs\.x\.teacher\.hf_id: cannot fetch 'tiny-org/absent'"):
        model_source({"hf_id": "tiny-org/absent"}, "pairs.x.teacher")
    with pytest.raises(ConfigError, match=r"pairs\.x\.student\.path: .* is not a model folder"):
        model_source({"path": str(tmp_path)}, "pairs.x.student")


def test_dwakd_models_links_a_published_pair_without_copying(tiny_pair, tmp_path):
    base = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    base["profiles"]["p"] = {**base["profiles"]["tiny"], "pairs": ["a"]}
    base["pairs"]["a"] = {"teacher": {"path": str(tiny_pair / "teacher")},
                          "student": {"path": str(tiny_pair / "student_base")}}
    base["profile"] = "p"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "models"
    r = subprocess.run([sys.executable, "-m", "dwakd.cli", "models", "--config", str(tmp_path / "c.yaml"), "--pair",
                        "a", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "teacher").is_symlink() and (out / "teacher").resolve() == (tiny_pair / "teacher").resolve()
    assert (out / "student_base" / "config.json").is_file()
    assert json.loads(r.stdout.strip().splitlines()[-1])["student_base"] == str((tiny_pair / "student_base").resolve())


# ------------------------------------------------------------------- several published-style pairs, for real


@pytest.mark.slow
def test_a_profile_of_published_style_pairs_runs_end_to_end(tiny_pair, tmp_path):
    """Two pairs of local `path:` models sharing a teacher that is LoRA-fine-tuned first, one LoRA student with
    gradient checkpointing, training under `accelerate launch`: the teacher's SFT, samples and evaluation and the
    shared vocabulary map are made once, each pair gets its tables."""
    base = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    teacher = {"path": str(tiny_pair / "teacher"), "name": "tiny-teacher", "dtype": "float32",
               "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
               "sft": {"max_steps": 2, "batch_size": 8, "lr": 1.0e-3, "max_prompt_len": 64, "max_len": 128,
                       "select_by": "rougeL", "dev_limit": 4, "dev_max_new_tokens": 4, "progress": False}}
    student = {"path": str(tiny_pair / "student_base"), "tokenizer": "tiny-student-tok"}
    base["pairs"]["a"] = {"teacher": teacher, "student": student}
    base["pairs"]["b"] = {"teacher": teacher, "student": {**student, "gradient_checkpointing": True,
                                                         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}
    prof = {**base["profiles"]["tiny"], "pairs": ["a", "b"], "results_dir": "results/hub", "train_limit": 32,
            "dev_limit": 4, "main_table": ["sft", "seqkd", "mined"], "ablation_table": [],
            "launcher": "accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no "
                        "--dynamo_backend no",
            "train": {**base["profiles"]["tiny"]["train"], "max_steps": 2, "select_by": "last"},
            "eval": {**base["profiles"]["tiny"]["eval"], "limit": 3, "seeds": [10], "max_new_tokens": 4},
            "generate": {**base["profiles"]["tiny"]["generate"], "max_new_tokens": 4}}
    base["profiles"]["hub"] = prof
    base["profile"] = "hub"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base))
    targets = [f"results/hub/{p}/tables/main.md" for p in ("a", "b")]
    r = _snakemake(*targets, "--cores", "2", "-d", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                   check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    jobs = _jobs(r.stdout + r.stderr)
    assert (jobs["hub_teacher_sft"], jobs["generate"], jobs["teacher_eval"], jobs["vocab_map"]) == (1, 1, 1, 1)
    assert jobs["train"] == 6 and jobs["models"] == 2
    res = tmp_path / "results/hub"
    sft = res / "teachers/tiny-teacher/model"
    assert (sft / "config.json").is_file() and (sft / "adapter").is_dir()  # LoRA merged, adapter kept beside
    assert (res / "a/models/teacher").resolve() == sft.resolve()
    for p in ("a", "b"):
        table = (res / p / "tables/main.md").read_text()
        assert "SeqKD" in table and "MinED" in table and "Teacher" in table
    assert (res / "b/runs/sft/model/adapter").is_dir() and not (res / "a/runs/sft/model/adapter").exists()
    cfg_b = yaml.safe_load((res / "b/runs/sft/resolved_config.yaml").read_text())
    assert cfg_b["pair"]["student"]["lora"]["r"] == 4
