"""On-policy distillation (``dwakd.on_policy``, ``Trainer.kd_batches`` / ``on_policy_loss``, ``Method.kd_loss``):
ratio 0 is off-policy training exactly, the KD part reads the student's samples and the CE the gold responses,
the schedule, resume, the methods' KD-only entry point, the configuration errors and the cost columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dwakd.train as T
from dwakd import config as C
from dwakd.data import encode_sample, response_length
from dwakd.errors import ConfigError
from dwakd.models import forward, load_model, load_tokenizer
from dwakd.on_policy import cut_at_eos, new_tokens, plan, prompt_length, sample, sample_item
from dwakd.registry import available, get_method
from dwakd.settings import from_dict
from dwakd.train import TrainConfig, Trainer

ON_POLICY = [n for n in available() if get_method(n).on_policy]
TIMING = ("step_time_s", "tokens_per_s", "peak_mem_mb", "gen_s")


# ------------------------------------------------------------------------------------------ helpers

def _trainer(pair: Path, out: Path, name: str = "dskd_cma", method_over: dict | None = None, **over) -> Trainer:
    torch.manual_seed(0)
    student, stok = load_model(pair / "student_base"), load_tokenizer(pair / "student_base")
    cls = get_method(name)
    teacher, ttok = load_model(pair / "teacher").requires_grad_(False).eval(), load_tokenizer(pair / "teacher")
    if not cls.needs_teacher_tokens:  # same vocabulary: the student base as its own teacher
        teacher, ttok = load_model(pair / "student_base").requires_grad_(False).eval(), stok
    torch.manual_seed(10)
    method = cls(from_dict(cls.Config, method_over or {}, name), student, teacher, stok, ttok)
    cfg = TrainConfig(**{"batch_size": 4, "lr": 3e-3, "max_len": 96, "max_prompt_len": 48, "select_by": "last",
                         "progress": False, "on_policy_max_new_tokens": 8, **over})
    return Trainer(method, student, teacher, stok, ttok, cfg, out)


def _log(out: Path, drop=TIMING) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in drop}
            for ln in (out / "train_log.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[dict]:
    return [x for x in _log(out, drop=()) if "loss" in x]


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {**{f"s.{k}": v.clone() for k, v in t.student.state_dict().items()},
            **{f"m.{k}": v.clone() for k, v in t.method.state_dict().items()}}


def _no_sampling(*a, **k):
    raise AssertionError("the student sampled in a run that is not on-policy")


# ------------------------------------------------------------------------------------------ the loop

def test_ratio_zero_is_off_policy_training_exactly(tiny_pair, dolly_small, tmp_path, monkeypatch):
    """on_policy_ratio 0 (with every other on-policy setting changed): the same step logs apart from timing, the
    same weights bit for bit, no sample drawn, no on-policy column in the log."""
    monkeypatch.setattr(T, "sample", _no_sampling)
    recs = dolly_small[:8]
    a = _trainer(tiny_pair, tmp_path / "a", epochs=2)
    a.fit(recs)
    b = _trainer(tiny_pair, tmp_path / "b", epochs=2, on_policy_ratio=0.0, on_policy_after_epochs=0,
                 on_policy_temperature=0.7, on_policy_top_p=0.9, on_policy_top_k=5, on_policy_max_new_tokens=3)
    b.fit(recs)
    assert _log(tmp_path / "a") == _log(tmp_path / "b")
    assert not {"on_policy", "gen_s", "kd_tokens"} & set(_steps(tmp_path / "b")[0])
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gold_samples_reproduce_the_off_policy_step(tiny_pair, dolly_small, tmp_path, monkeypatch):
    """The on-policy path fed the gold responses as the student's 'samples' (DSKD-ETA, whose KD part is the same on
    either) trains as off-policy training does, up to floating-point summation order: the CE on the gold batch,
    the KD part on the other batch, each divided by its own response tokens (here the same)."""
    recs = dolly_small[:8]
    _trainer(tiny_pair, tmp_path / "off", "dskd_eta", epochs=1).fit(recs)
    monkeypatch.setattr(T, "sample", lambda model, prompts, **k: [[0]] * len(prompts))
    monkeypatch.setattr(T, "sample_item", lambda gold, response, *a: gold)
    on = _trainer(tiny_pair, tmp_path / "on", "dskd_eta", epochs=1, on_policy_ratio=1.0, on_policy_after_epochs=0)
    on.fit(recs)
    off_steps, on_steps = _steps(tmp_path / "off"), _steps(tmp_path / "on")
    assert [x["on_policy"] for x in on_steps] == [1.0, 1.0] and [x["kd_tokens"] for x in on_steps] == \
        [x["tokens"] for x in off_steps]
    # step 2's values read the weights after step 1 (AdamW turns rounding-level gradient differences into
    # updates of up to lr, so the weights themselves are not compared element by element)
    for x, y in zip(off_steps, on_steps):
        for k in ("loss", "ce", "ce_t2s", "kd_stu", "kd_tea", "aligned_ratio", "t2s_agree", "grad_norm"):
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-7), k


def test_at_ratio_one_the_kd_part_reads_the_samples_and_the_ce_the_gold(tiny_pair, dolly_small, tmp_path,
                                                                       monkeypatch):
    """Monkeypatched samples of known text: the batch ``kd_loss`` sees is prompt + sample on the student side (as
    sampled, EOS kept) and teacher prompt + the teacher's tokenisation of the text + EOS on the teacher side; the
    logged CE is the gold batch's; the KD terms are divided by the samples' response tokens."""
    t = _trainer(tiny_pair, tmp_path / "r", "dskd_cma", max_steps=1, on_policy_ratio=1.0, on_policy_after_epochs=0)
    stok, ttok = t.stok, t.ttok
    known = stok("the answer is nine", add_special_tokens=False)["input_ids"]
    calls, seen = [], []
    monkeypatch.setattr(T, "sample", lambda model, prompts, **k: calls.append((prompts, k)) or
                        [known + [stok.eos_token_id]] * len(prompts))
    orig = type(t.method).kd_loss

    def spy(self, batch, s_out, t_out):
        seen.append(batch)
        return orig(self, batch, s_out, t_out)

    monkeypatch.setattr(type(t.method), "kd_loss", spy)
    recs = dolly_small[:4]
    items = t.make_items(recs)
    first = [items[i] for i in t.micro_batches(items, 0)[0]]  # the step's micro-batch, in the epoch's order
    t.fit(recs)
    (prompts, kw), = calls
    assert prompts == [x["input_ids"][:prompt_length(x["labels"])] for x in first]
    assert kw["max_new_tokens"] == 8 and kw["temperature"] == 1.0 and kw["top_k"] == 0 and kw["top_p"] == 1.0
    (batch,) = seen
    assert batch["on_policy"] is True
    t_resp = ttok("the answer is nine", add_special_tokens=False)["input_ids"] + [ttok.eos_token_id]
    for b, x in enumerate(first):
        p, tp = prompt_length(x["labels"]), prompt_length(x["teacher"]["labels"])
        s_ids = x["input_ids"][:p] + known + [stok.eos_token_id]
        t_ids = x["teacher"]["input_ids"][:tp] + t_resp
        assert batch["student"]["input_ids"][b, :len(s_ids)].tolist() == s_ids
        assert batch["student"]["labels"][b, :len(s_ids)].tolist() == [-100] * p + known + [stok.eos_token_id]
        assert batch["teacher"]["input_ids"][b, :len(t_ids)].tolist() == t_ids
        assert batch["teacher"]["labels"][b, :len(t_ids)].tolist() == [-100] * tp + t_resp
    (step,) = _steps(tmp_path / "r")
    assert step["on_policy"] == 1.0 and step["gen_s"] >= 0 and step["kd_tokens"] == 4 * (len(known) + 1)
    assert step["tokens"] == sum(response_length(x) for x in items)
    # the CE is the gold batch's under the initial weights: the same student, the same first batch
    fresh = _trainer(tiny_pair, tmp_path / "fresh", "dskd_cma")
    gold = fresh.batch([fresh.make_items(recs)[i] for i in fresh.micro_batches(items, 0)[0]])  # = first
    with torch.no_grad():
        ce = T.token_ce(forward(fresh.student, gold["student"]["input_ids"], gold["student"]["attention_mask"]).logits,
                        gold["student"]["labels"])
    assert step["ce"] == pytest.approx(float(ce) / step["tokens"], rel=1e-6)


def test_schedule_after_epochs_and_ratio(tiny_pair, dolly_small, tmp_path, monkeypatch):
    """Epochs before on_policy_after_epochs are off-policy (no sample); after, a micro-batch samples with
    probability on_policy_ratio, the draws those of ``plan``; the log says which steps were on-policy."""
    calls = []
    orig = T.sample
    monkeypatch.setattr(T, "sample", lambda *a, **k: calls.append(k["seed"]) or orig(*a, **k))
    t = _trainer(tiny_pair, tmp_path / "s", "vanilla_kd", epochs=3, batch_size=2, on_policy_ratio=0.5,
                 on_policy_after_epochs=1)
    t.fit(dolly_small[:8])
    steps = _steps(tmp_path / "s")
    assert [x["epoch"] for x in steps] == [0] * 4 + [1] * 4 + [2] * 4
    expect = [plan(10, x["epoch"], (x["step"] - 1) % 4, 0.5) for x in steps]
    assert [x["on_policy"] for x in steps] == [0.0] * 4 + [float(d) for d, _ in expect[4:]]
    assert calls == [s for d, s in expect[4:] if d] and 0 < len(calls) < 8
    assert all(x["gen_s"] == 0.0 and x["kd_tokens"] == x["tokens"] for x in steps if not x["on_policy"])


def test_plan_is_a_function_of_the_settings_and_draws_the_ratio():
    assert plan(10, 1, 7, 0.5) == plan(10, 1, 7, 0.5) != plan(10, 1, 8, 0.5)
    assert not any(plan(10, 0, k, 0.0)[0] for k in range(200)) and all(plan(10, 0, k, 1.0)[0] for k in range(200))
    share = sum(plan(3, 2, k, 0.3)[0] for k in range(4000)) / 4000
    assert abs(share - 0.3) < 0.03
    assert plan(3, 2, 5, 0.3)[1] == plan(3, 2, 5, 0.9)[1]  # the seed does not depend on the ratio


def test_resume_mid_run_equals_an_uninterrupted_on_policy_run(tiny_pair, dolly_small, tmp_path, interrupted_fit):
    recs = dolly_small[:8]
    kw = dict(epochs=2, batch_size=2, save_every_steps=2, on_policy_ratio=0.5, on_policy_after_epochs=0)
    full = _trainer(tiny_pair, tmp_path / "full", "dskd_cma", **kw)
    full.fit(recs)
    t = _trainer(tiny_pair, tmp_path / "killed", "dskd_cma", **kw)
    interrupted_fit(t, recs, 6)  # epoch 2, second step: resumed from the end of epoch 1 (step 4)
    resumed = _trainer(tiny_pair, tmp_path / "killed", "dskd_cma", **kw)
    resumed.fit(recs, resume=True)
    a, b = _steps(tmp_path / "full"), _steps(tmp_path / "killed")
    assert [x["on_policy"] for x in a[4:6]] == [1.0, 1.0] and len(a) == len(b) == 8  # plan(10, 1, 0 | 1, 0.5)
    for x, y in zip(a, b):
        assert x["on_policy"] == y["on_policy"] and x["kd_tokens"] == y["kd_tokens"]
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=0)
    wa, wb = _weights(full), _weights(resumed)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


# ------------------------------------------------------------------------------------------ sampling and items

def test_sample_left_pads_restores_the_mode_and_cuts_at_eos(tiny_pair):
    model, tok = load_model(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "student_base")
    model.train()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("Name a colour.", "Why is the sky blue? Say")]
    kw = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, temperature=1.0, top_p=1.0, top_k=1,
              max_new_tokens=6, seed=3)
    both = sample(model, prompts, **kw)
    assert model.training
    # greedy (top-k 1): each prompt alone gives what it gets in the left-padded batch
    assert both == [sample(model, [p], **kw)[0] for p in prompts]
    drawn = sample(model, prompts, **{**kw, "top_k": 0})
    assert drawn == sample(model, prompts, **{**kw, "top_k": 0}) and all(
        len(r) <= 6 and (tok.eos_token_id not in r[:-1]) for r in drawn)
    assert cut_at_eos([5, 6, 2, 7, 2], 2) == [5, 6, 2] and cut_at_eos([5, 6], 2) == [5, 6]
    assert new_tokens(512, 256) == 256 and new_tokens(512, 256, 128) == 128 and new_tokens(128, 64, 500) == 64


def test_sample_item_tokenises_the_teacher_side_as_the_data_pipeline(tiny_pair, dolly_small):
    stok, ttok = load_tokenizer(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "teacher")
    r = dolly_small[3]
    gold = {"index": 3, **_encoded(stok, r), "teacher": _encoded(ttok, r)}
    text = "Paris is the capital of France"
    resp = stok(text, add_special_tokens=False)["input_ids"]
    ended = sample_item(gold, resp + [stok.eos_token_id], stok, ttok, 512)
    ref = encode_sample(ttok, r["prompt"], stok.decode(resp, skip_special_tokens=True), 256, 512)
    assert ended["teacher"]["input_ids"] == ref.input_ids and ended["teacher"]["labels"] == ref.labels
    assert ended["input_ids"] == gold["input_ids"][:prompt_length(gold["labels"])] + resp + [stok.eos_token_id]
    cut = sample_item(gold, resp, stok, ttok, 512)  # cut by the length limit: no EOS on either side
    assert cut["teacher"]["input_ids"] == ref.input_ids[:-1] and cut["labels"][-1] == resp[-1]


def _encoded(tok, r):
    e = encode_sample(tok, r["prompt"], r["output"][0], 256, 512)
    return {"input_ids": e.input_ids, "labels": list(e.labels)}


# ------------------------------------------------------------------------------------------ the methods

@pytest.mark.parametrize("name, over", [(n, {}) for n in ON_POLICY] + [("cma_ga", {"variant": "reference_code"}),
                                                                         ("dwakd", {"variant": "w_ew"})])
@pytest.mark.parametrize("on_policy", [False, True])
def test_loss_is_ce_weight_times_ce_plus_kd_loss(name, over, on_policy, tiny_pair, dolly_small, tmp_path):
    """Every method that declares ``on_policy``: ``loss = ce_weight·CE + kd_loss`` on the same batch, the same
    logged terms but ``ce``; on a batch flagged as the student's samples too."""
    t = _trainer(tiny_pair, tmp_path / "m", name, over)
    m = t.method
    batch = t.batch(t.make_items(dolly_small[9:12]))
    if on_policy:
        batch["on_policy"] = True
    m.eval()  # CMA-GA's discriminator dropout off: the two calls see the same network
    with torch.no_grad():
        s_out, t_out = t.forward(batch)
        loss, logs = m.loss(batch, s_out, t_out)
        kd, kd_logs = m.kd_loss(batch, s_out, t_out)
    ce = T.token_ce(s_out.logits, batch["student"]["labels"])
    assert float(loss) == pytest.approx(float(m.ce_weight() * ce + kd), rel=1e-6)
    assert "ce" not in kd_logs and list(kd_logs) == [k for k in logs if k != "ce"]
    assert all(float(kd_logs[k]) == pytest.approx(float(logs[k]), rel=1e-6) for k in kd_logs)


def test_methods_without_on_policy_raise_on_kd_loss_and_the_capability_is_read_by_the_workflow():
    assert {"dskd_eta", "dskd_cma", "cma_ga", "dwakd", "vanilla_kd"} <= set(ON_POLICY)
    assert not {"sft", "uld", "mined", "multilevel_ot", "seqkd"} & set(ON_POLICY)
    with pytest.raises(NotImplementedError, match="uld: no kd_loss"):
        get_method("uld").kd_loss(type("M", (), {"name": "uld"})(), {}, None, None)
    specs = C.method_specs(None)
    assert {n for n, s in specs.items() if s["on_policy"]} == set(ON_POLICY)


def test_cma_on_policy_labels_are_the_teachers_argmax_at_aligned_positions(tiny_pair, dolly_small, tmp_path):
    """DSKD-CMA on the student's samples: L_ce_t2s and the accuracy mask read the teacher's argmax at the
    ETA-aligned teacher position, mapped into the student vocabulary (−100 where unaligned or unmapped)."""
    from dwakd.align.responses import aligned_positions, eta_pairs

    t = _trainer(tiny_pair, tmp_path / "c", "dskd_cma")
    m = t.method
    batch = t.batch(t.make_items(dolly_small[9:11]))
    with torch.no_grad():
        s_out, t_out = t.forward(batch)
    assert m.t2s_targets(batch, t_out) is None
    y = m.t2s_targets({**batch, "on_policy": True}, t_out)
    sl, tl = batch["student"]["labels"], batch["teacher"]["labels"]
    b, sp, tp = aligned_positions(sl, tl, lambda s, q: eta_pairs(t.stok, t.ttok, s, q))
    assert len(b) > 5 and int((y != -100).sum()) <= len(b)
    full = t_out.logits_index(torch.tensor(b), torch.tensor(tp)).argmax(-1)
    for k, (bb, ss) in enumerate(zip(b, sp)):
        expect = m._label_map[full[k]]
        assert int(y[bb, ss]) == int(expect)
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[b, sp] = True
    assert bool((y[~mask] == -100).all())
    with torch.no_grad():
        gold = m.terms(batch, s_out, t_out)
        on = m.terms({**batch, "on_policy": True}, s_out, t_out, with_ce=False)
    assert float(on.ce) == 0.0 and float(on.kd_tea) == pytest.approx(float(gold.kd_tea))  # L_kd_tea has no label
    assert float(on.t2s_acc) <= int((y != -100).sum())


# ------------------------------------------------------------------------------------------ configuration

def test_config_errors_name_the_key(tiny_pair, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.on_policy_ratio: 0\.5 asks for on-policy distillation, which "
                                          r"method 'uld' does not support \(methods that do: cma_ga, .*dwakd"):
        _trainer(tiny_pair, tmp_path / "u", "uld", on_policy_ratio=0.5, on_policy_after_epochs=0)
    with pytest.raises(ConfigError, match=r"t\.on_policy_after_epochs: 3 off-policy epochs leave none of the 3"):
        from_dict(TrainConfig, {"on_policy_ratio": 0.5, "epochs": 3}, "t")
    with pytest.raises(ConfigError, match=r"t\.on_policy_ratio: expected a value in \[0\.0, 1\.0\], got 1\.5"):
        from_dict(TrainConfig, {"on_policy_ratio": 1.5}, "t")
    with pytest.raises(ConfigError, match=r"t\.on_policy_ratio: on-policy distillation samples responses"):
        from_dict(TrainConfig, {"on_policy_ratio": 0.5, "on_policy_after_epochs": 0, "pack": True}, "t")
    with pytest.raises(ConfigError, match=r"t\.on_policy_top_p: expected a value in \(0\.0, 1\.0\]"):
        from_dict(TrainConfig, {"on_policy_top_p": 0}, "t")
    assert from_dict(TrainConfig, {"on_policy_ratio": 0.5, "on_policy_after_epochs": 2, "epochs": 3}, "t")


def test_a_run_asking_on_policy_of_a_method_without_it_fails_the_dry_run_and_dwakd_train():
    from dwakd.run import build_run

    over = {"runs": {"uld": {"method": "uld", "train": {"on_policy_ratio": 0.5}}}}
    msg = r"runs\.uld\.train\.on_policy_ratio: 0\.5 asks for on-policy distillation, which method 'uld' does not"
    with pytest.raises(ConfigError, match=msg):
        C.check_methods(C.load(None, over), C.method_specs(None))
    with pytest.raises(ConfigError, match=msg):
        build_run(C.load(None, over), "uld")


def test_on_policy_runs_take_the_profile_schedule_and_the_other_runs_do_not():
    from dwakd.run import build_run

    for prof, after, cap in (("mini", 1, 128), ("tiny", 0, 24), ("gpu-small", 1, 256), ("paper", 3, 0)):
        cfg = C.load(None, {"profile": prof})
        pair = C.profile(cfg)["pairs"][0]
        for run in ("dskd_eta_on_policy", "dskd_cma_on_policy", "dwakd_on_policy"):
            tc = build_run(cfg, run, pair).train_config
            assert (tc.on_policy_ratio, tc.on_policy_after_epochs, tc.on_policy_max_new_tokens) == (0.5, after, cap)
            assert tc.on_policy_after_epochs < tc.epochs
        # the off-policy runs' settings (and so their jobs) do not see on_policy_train
        assert "on_policy_after_epochs" not in C.train_overrides(cfg, "dskd_cma", pair)
    tables = C.tables(C.profile(C.load(None, {"profile": "mini"})))
    assert tables["on_policy"] == ["dskd_eta", "dskd_eta_on_policy", "dskd_cma", "dskd_cma_on_policy", "dwakd",
                                   "dwakd_on_policy"]
    assert "on_policy" not in C.tables(C.profile(C.load(None, {"profile": "mini"})), default_only=True)
    assert C.tables(C.profile(C.load(None, {"profile": "tiny"})), default_only=True)["on_policy"] == \
        ["dskd_cma", "dskd_cma_on_policy"]


# ------------------------------------------------------------------------------------------ the cost

def test_efficiency_shows_the_generation_cost(tmp_path):
    from dwakd.efficiency import curves_frame, efficiency_table, read_logs

    def write(run, lines):
        (tmp_path / run).mkdir()
        (tmp_path / run / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    base = {"lr": 1e-3, "grad_norm": 1.0, "tokens": 10, "tokens_per_s": 100.0, "peak_mem_mb": 50.0}
    write("sft", [{"step": s, "epoch": 0, "loss": 1.0, "ce": 1.0, "step_time_s": 1.0, **base} for s in (1, 2)])
    write("op", [{"step": s, "epoch": 0, "loss": 1.0, "ce": 1.0, "on_policy": float(s == 2), "gen_s": 3.0 * (s == 2),
                  "kd_tokens": 12, "step_time_s": 1.0 + 3.0 * (s == 2), **base} for s in (1, 2)])
    t = efficiency_table(tmp_path, ["sft", "op"], {"sft": "SFT", "op": "On"})
    f = t["frame"].set_index("run")
    assert f.at["op", "on_policy_steps"] == 1 and f.at["op", "gen_s_per_step"] == pytest.approx(1.5)
    assert f.at["op", "gen_share"] == pytest.approx(3.0 / 5.0) and f.at["sft", "on_policy_steps"] == 0
    assert "generation share of time" in t["table"].columns
    assert set(curves_frame(read_logs(tmp_path, ["op"]), {}).term) == {"loss", "ce"}
    # without any on-policy run the table has no generation columns
    assert "gen_share" not in efficiency_table(tmp_path, ["sft"], {})["frame"]


def test_mini_on_policy_table_is_its_own_target(tmp_path):
    """`snakemake on_policy` trains the on-policy table's runs and writes tables/on_policy.*; mini's default target
    trains none of the on-policy runs (tests/test_workflow.py checks its run list)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-n", "-p", "-d",
                        str(tmp_path), "--cores", "2", "on_policy"], capture_output=True, text=True, cwd=root)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cmds = [ln.split("Shell command: ", 1)[1] for ln in out.splitlines() if ln.startswith("Shell command: ")]
    runs = {c.split("--run ")[1].split()[0] for c in cmds if " train " in c}
    assert runs == {"dskd_eta", "dskd_eta_on_policy", "dskd_cma", "dskd_cma_on_policy", "dwakd", "dwakd_on_policy"}
    assert "results/mini/tables/on_policy.md" in out and "results/mini/tables/on_policy_efficiency.md" in out
    eff = [c for c in cmds if " efficiency " in c]
    assert len(eff) == 1 and "--table on_policy" in eff[0]


def test_the_documented_on_policy_defaults_are_the_codes():
    """docs/methods.md "On-policy distillation" lists every on-policy field of TrainConfig with its default."""
    import dataclasses
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    section = doc.split("## On-policy distillation", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(on_policy_\w+)` \| `([^`]+)` \|", section, re.M))
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name.startswith("on_policy")}
    assert rows.keys() == fields.keys() and all(eval(rows[k]) == v for k, v in fields.items())
