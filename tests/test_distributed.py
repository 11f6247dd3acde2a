"""``dwakd train`` under ``accelerate launch`` (DDP, 2 CPU processes, gloo) gives the one-process result.

One ``accelerate launch --multi_gpu --num_processes 2`` (``ACCELERATE_USE_CPU=true``: DDP over gloo on CPU)
runs this file as a script with the jobs below; each job is also run here in one process, and the training
logs (loss and every term per step, learning rate, gradient norm, the dev scores), ``selection.json`` and the
saved models must agree. The jobs cover: one micro-batch per process per step (SFT, dev ROUGE-L), and an
uneven split with a process left without a micro-batch in an epoch's last step (DSKD-CMA, whose projectors are
trained: dev bits per byte), the same on-policy (the student's samples drawn per micro-batch, their token count
all-reduced), and a non-finite loss in one process's micro-batch only, which must stop both
processes at the same step. Also: the accelerate config files of ``config/accelerate`` parse with accelerate's
own loader.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
N_RECORDS = 300  # conftest's dolly_small

JOBS = {
    # 12 samples, 6 micro-batches of 2, 2 per step: each process computes one micro-batch per step
    "sft": {"method": "sft", "records": [0, 12], "dev": [200, 206],
            "train": {"epochs": 2, "batch_size": 2, "grad_accum": 2, "select_by": "rougeL", "dev_max_new_tokens": 8}},
    # 14 samples, 7 micro-batches, 3 per step (3, 3, 1): process 0 accumulates two (no_sync), process 1 one,
    # and in each epoch's last step process 1 has none (it joins with weight 0)
    "dskd_cma": {"method": "dskd_cma", "records": [20, 34], "dev": [200, 206],
                 "train": {"epochs": 2, "batch_size": 2, "grad_accum": 3, "select_by": "loss"}},
    # the same, on-policy (docs/methods.md "On-policy distillation"): each process samples for its own drawn
    # micro-batches; the KD parts' token count is all-reduced, a process without a micro-batch joins with weight 0
    "dskd_cma_on_policy": {"method": "dskd_cma", "records": [20, 34], "dev": [200, 206],
                           "train": {"epochs": 2, "batch_size": 2, "grad_accum": 3, "select_by": "loss",
                                     "on_policy_ratio": 0.5, "on_policy_after_epochs": 0,
                                     "on_policy_max_new_tokens": 6}},
    # sample 43 gives a NaN loss; it is in a micro-batch of one process only
    "nan": {"method": "sft", "records": [40, 52], "nan_index": 3,
            "train": {"epochs": 1, "batch_size": 2, "grad_accum": 2, "select_by": "last"}},
}
NOT_COMPARED = ("step_time_s", "tokens_per_s", "peak_mem_mb", "gen_s")


def train_job(pair: Path, out: Path, job: dict) -> None:
    """What ``dwakd train`` does (cmd_train), for one job, on this process's device."""
    from dwakd.data import SHIPPED_DATA, load_jsonl
    from dwakd.models import load_model, load_tokenizer
    from dwakd.registry import get_method
    from dwakd.train import TrainConfig, Trainer, make_dev_scorer, process_state

    records = load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[:N_RECORDS]
    state = process_state()
    device = state.device
    cls = get_method(job["method"])
    student = load_model(pair / "student_base").to(device)
    stok = load_tokenizer(pair / "student_base")
    teacher = ttok = None
    if cls.needs_teacher:
        teacher = load_model(pair / "teacher").to(device).requires_grad_(False)
        ttok = load_tokenizer(pair / "teacher")
    torch.manual_seed(0)  # the projectors' initialisation (DDP also broadcasts process 0's)
    method = cls(cls.Config(), student, teacher, stok, ttok).to(device)
    if "nan_index" in job:
        loss = method.loss

        def nan_loss(batch, s_out, t_out):
            value, logs = loss(batch, s_out, t_out)
            bad = bool((batch["index"] == job["nan_index"]).any())
            return (value * float("nan"), logs) if bad else (value, logs)

        method.loss = nan_loss
    cfg = TrainConfig(**{"lr": 3e-3, "max_len": 96, "max_prompt_len": 48, "progress": False, **job["train"]})
    dev_scorer = make_dev_scorer(records[slice(*job["dev"])], stok, cfg) if "dev" in job else None
    trainer = Trainer(method, student, teacher, stok, ttok, cfg, out, dev_scorer)
    try:
        trainer.fit(records[slice(*job["records"])])
    except FloatingPointError as e:
        (out / f"error_{state.process_index}.txt").write_text(str(e))
    (out / f"process_{state.process_index}.json").write_text(json.dumps(
        {"world": state.num_processes, "type": state.distributed_type.value, "device": str(device)}))


def main(argv: list[str]) -> None:
    pair, out = Path(argv[0]), Path(argv[1])
    for name in argv[2:]:
        train_job(pair, out / name, JOBS[name])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_log(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in NOT_COMPARED}
            for line in path.read_text().splitlines()]


def max_abs_diff(a: list[dict], b: list[dict]) -> float:
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if isinstance(x[k], float)]
    return max(diffs, default=0.0)


@pytest.fixture(scope="module")
def two_process_runs(tiny_pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), __file__, str(tiny_pair), str(out), *JOBS]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"accelerate launch failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return out


@pytest.mark.parametrize("name", ["sft", "dskd_cma", "dskd_cma_on_policy"])
def test_two_processes_equal_one_process(name, two_process_runs, tiny_pair, tmp_path):
    one = tmp_path / name
    train_job(tiny_pair, one, JOBS[name])
    two = two_process_runs / name
    for rank in (0, 1):  # it really ran as two processes (DDP over gloo)
        proc = json.loads((two / f"process_{rank}.json").read_text())
        assert proc["world"] == 2 and proc["type"] == "MULTI_CPU" and proc["device"].startswith("cpu")
    log1, log2 = read_log(one / "train_log.jsonl"), read_log(two / "train_log.jsonl")
    assert len(log1) == len(log2) and [r.keys() for r in log1] == [r.keys() for r in log2]
    dev_key = "dev_" + JOBS[name]["train"]["select_by"]
    assert sum("loss" in r for r in log1) == 6 and sum(dev_key in r for r in log1) == 2
    for r1, r2 in zip(log1, log2):
        for k, v in r1.items():
            assert r2[k] == (pytest.approx(v, rel=1e-4, abs=1e-7) if isinstance(v, float) else v), (k, r1, r2)
    print(f"{name}: max abs diff over the logged values (loss, terms, lr, grad norm, dev score) "
          f"{max_abs_diff(log1, log2):.3g}")
    sel1, sel2 = (json.loads((d / "selection.json").read_text()) for d in (one, two))
    assert sel1["best_epoch"] == sel2["best_epoch"] and sel1["best"] == pytest.approx(sel2["best"], rel=1e-6)
    from safetensors.torch import load_file

    m1, m2 = (load_file(d / "model" / "model.safetensors") for d in (one, two))
    assert m1.keys() == m2.keys()
    assert max(float((m1[k] - m2[k]).abs().max()) for k in m1) < 1e-5
    if name.startswith("dskd_cma"):  # the trained projectors, saved beside the student
        s1, s2 = (torch.load(d / "model" / "method_state.pt", weights_only=True)["state"] for d in (one, two))
        assert s1.keys() == s2.keys() and all(torch.allclose(s1[k], s2[k], atol=1e-5) for k in s1)
    assert not (two / "checkpoints").exists() or not list((two / "checkpoints").glob("*/latest"))


def test_non_finite_loss_stops_every_process_at_the_same_step(two_process_runs, tiny_pair, tmp_path):
    train_job(tiny_pair, tmp_path / "nan", JOBS["nan"])
    one = (tmp_path / "nan" / "error_0.txt").read_text()
    errors = [(two_process_runs / "nan" / f"error_{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert one.split("(terms")[0] == errors[0].split("(terms")[0]  # "non-finite loss nan at step N"
    assert "non-finite loss nan at step" in one and "batch ids" in one


def launch_env(config: Path) -> tuple[object, dict]:
    """What ``accelerate launch --config_file CONFIG`` makes of the file before it starts any process: the
    validated arguments (the file loaded by ``load_config_from_file``) and the processes' environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "dwakd.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name,kind", [("ddp.yaml", "MULTI_GPU"), ("deepspeed_zero3.yaml", "DEEPSPEED"),
                                       ("fsdp.yaml", "FSDP")])
def test_accelerate_configs_parse(name, kind, monkeypatch):
    """Each file loads with accelerate's own loader and becomes the launcher's environment and plugin
    (DeepSpeed's without deepspeed installed); nothing is run: no GPU here."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    path = ROOT / "config" / "accelerate" / name
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == kind and cfg.mixed_precision == "bf16" and not cfg.use_cpu
    assert cfg.num_machines == 1 and cfg.num_processes >= 1
    args, env = launch_env(path)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and args.module
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if kind == "MULTI_GPU":
        assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    elif kind == "DEEPSPEED":
        ds = cfg.deepspeed_config
        assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is False and ds["gradient_accumulation_steps"] == 1
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision("bf16")
        c = plugin.deepspeed_config
        assert c["zero_optimization"]["stage"] == 3 and c["bf16"] == {"enabled": True}
        assert c["zero_optimization"]["offload_optimizer"]["device"] == "none"
        assert c["zero_optimization"]["offload_param"]["device"] == "none"
    else:
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_mixed_precision("bf16")
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD
        assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
        assert plugin.transformer_cls_names_to_wrap is None  # taken from the student's _no_split_modules
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"
        assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16


if __name__ == "__main__":
    main(sys.argv[1:])
