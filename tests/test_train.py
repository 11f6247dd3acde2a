import dataclasses
import json

import pytest
import torch

from dwakd.data import collate, epoch_order, pack_blocks
from dwakd.methods.sft import SFT, SFTConfig
from dwakd.models import load_model, load_tokenizer
from dwakd.train import TrainConfig, Trainer


def make_trainer(pair, out, **over):
    torch.manual_seed(0)
    student = load_model(pair / "student_base")
    tok = load_tokenizer(pair / "student_base")
    cfg = TrainConfig(**{"batch_size": 4, "lr": 3e-3, "max_len": 96, "max_prompt_len": 48, "select_by": "last",
                         "progress": False, **over})
    return Trainer(SFT(SFTConfig(), student), student, None, tok, None, cfg, out)


def losses(out):
    return [json.loads(l)["loss"] for l in (out / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(l)]


def test_loss_decreases_on_a_tiny_model(tiny_pair, dolly_small, tmp_path):
    t = make_trainer(tiny_pair, tmp_path / "run", epochs=10, lr=1e-2)
    t.fit(dolly_small[:8])
    ls = losses(tmp_path / "run")
    assert len(ls) == 20
    assert ls[-1] < 0.75 * ls[0]  # from ln(V) = 6.4 (uniform) to below 4.8
    assert (tmp_path / "run" / "model" / "config.json").exists()
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    step = log[0]
    for key in ("loss", "ce", "lr", "tokens_per_s", "peak_mem_mb", "grad_norm", "step_time_s"):
        assert key in step


def test_resume_equals_uninterrupted_run(tiny_pair, dolly_small, tmp_path, interrupted_fit):
    recs = dolly_small[:12]
    make_trainer(tiny_pair, tmp_path / "full", epochs=3, save_every_steps=2).fit(recs)
    full = losses(tmp_path / "full")

    # kill the run inside epoch 2 (after a mid-epoch checkpoint), then resume
    t = make_trainer(tiny_pair, tmp_path / "killed", epochs=3, save_every_steps=2)
    interrupted_fit(t, recs, 6)  # step 6 = epoch 2, second step: after the step-4 checkpoint... and epoch-1 one
    ckpts = list((tmp_path / "killed" / "checkpoints").glob("*/latest"))
    assert len(ckpts) == 1 and ckpts[0].read_text() == "step-4"
    with pytest.raises(FileExistsError, match="--resume"):
        make_trainer(tiny_pair, tmp_path / "killed", epochs=3, save_every_steps=2).fit(recs)
    make_trainer(tiny_pair, tmp_path / "killed", epochs=3, save_every_steps=2).fit(recs, resume=True)
    resumed = losses(tmp_path / "killed")
    assert len(resumed) == len(full) == 9
    assert resumed == pytest.approx(full, rel=1e-6, abs=0)
    assert not list((tmp_path / "killed" / "checkpoints").glob("*/latest"))  # finished: checkpoints removed
    a = load_model(tmp_path / "full" / "model").state_dict()
    b = load_model(tmp_path / "killed" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_accumulation_matches_a_larger_batch(tiny_pair, dolly_small, tmp_path):
    recs = dolly_small[:8]
    make_trainer(tiny_pair, tmp_path / "big", batch_size=4, grad_accum=1, max_steps=2).fit(recs)
    make_trainer(tiny_pair, tmp_path / "acc", batch_size=2, grad_accum=2, max_steps=2).fit(recs)
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "big"), rel=1e-5)


def test_non_finite_loss_stops_with_step_terms_and_batch_ids(tiny_pair, dolly_small, tmp_path, monkeypatch):
    t = make_trainer(tiny_pair, tmp_path / "nan", epochs=1)

    def nan_loss(self, batch, s, t_):
        return torch.tensor(float("nan"), requires_grad=True), {"ce": torch.tensor(float("nan"))}

    monkeypatch.setattr(SFT, "loss", nan_loss)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 1 .*'ce'.*batch ids \[\d"):
        t.fit(dolly_small[:4])


def test_collate_pads_right_and_masks_labels():
    b = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pack_blocks_and_epoch_order():
    enc = [{"input_ids": list(range(5)), "labels": list(range(5))}, {"input_ids": [9] * 4, "labels": [9] * 4}]
    blocks = pack_blocks(enc, 4)
    assert [b["input_ids"] for b in blocks] == [[0, 1, 2, 3], [4, 9, 9, 9]]
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)


def test_epoch_order_groups_lengths_into_batches():
    """group_by_length: a permutation (every sample once), reproducible, and batches of similar lengths: the
    padded width of the grouped batches is close to the real tokens, far below random batches'."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 500, (700,), generator=g).tolist()

    def padded(order, b=16):
        return sum(max(lengths[k] for k in order[i:i + b]) * len(order[i:i + b]) for i in range(0, len(order), b))

    grouped = epoch_order(700, 3, 0, lengths, 16)
    assert sorted(grouped) == list(range(700))
    assert grouped == epoch_order(700, 3, 0, lengths, 16) != epoch_order(700, 3, 1, lengths, 16)
    plain = epoch_order(700, 3, 0)
    assert padded(grouped) < 1.1 * sum(lengths) < 1.5 * sum(lengths) < padded(plain)
    # the batches' order is shuffled: not simply longest first
    firsts = [lengths[grouped[i]] for i in range(0, 700, 16)]
    assert firsts != sorted(firsts, reverse=True)


def test_train_config_rejects_bad_values():
    from dwakd.errors import ConfigError
    from dwakd.settings import from_dict

    with pytest.raises(ConfigError, match=r"train\.select_by: expected"):
        from_dict(TrainConfig, {"select_by": "best"}, "train")
    with pytest.raises(ConfigError, match=r"train: unknown option\(s\) \['lrate'\]"):
        from_dict(TrainConfig, {"lrate": 1.0}, "train")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'two'"):
        from_dict(TrainConfig, {"epochs": "two"}, "train")
    assert dataclasses.asdict(from_dict(TrainConfig, {"lr": 1}, "train"))["lr"] == 1.0


def test_changed_settings_do_not_resume_a_stale_checkpoint(tiny_pair, dolly_small, tmp_path, interrupted_fit):
    recs = dolly_small[:8]
    t = make_trainer(tiny_pair, tmp_path / "r", epochs=2)
    interrupted_fit(t, recs, 3)  # in epoch 2
    changed = make_trainer(tiny_pair, tmp_path / "r", epochs=2, lr=1e-4)
    state = changed.fit(recs, resume=True)
    assert state["step"] == 4 and len(losses(tmp_path / "r")) == 4  # started from step 0
    assert len(list((tmp_path / "r" / "checkpoints").glob("*/latest"))) == 1  # the stale one is kept


def test_dev_selection_keeps_the_best_epoch(tiny_pair, dolly_small, tmp_path):
    scores = iter([3.0, 5.0, 4.0])
    t = make_trainer(tiny_pair, tmp_path / "sel", epochs=3, select_by="rougeL")
    saved = []
    t.dev_scorer = lambda model: next(scores)
    orig = t.save_model
    t.save_model = lambda dest: (saved.append(dict(model=dest)), orig(dest))
    t.fit(dolly_small[:4])
    sel = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert sel["best_epoch"] == 1 and sel["best"] == 5.0 and len(saved) == 2
    assert [h["dev_rougeL"] for h in sel["history"]] == [3.0, 5.0, 4.0]


def test_response_length_counts_what_the_loss_is_normalised_by(tiny_pair, dolly_small):
    from dwakd.data import response_length

    t = make_trainer(tiny_pair, "unused")
    items = t.make_items(dolly_small[:6])
    b = t.batch(items)
    assert sum(response_length(x) for x in items) == int((b["student"]["labels"][:, 1:] != -100).sum())


def test_sharded_generation_and_dev_scores_do_not_depend_on_the_process_count(tiny_pair, dolly_small):
    from dwakd.evaluate import GenConfig, bits_per_byte, generate_shard
    from dwakd.train import make_dev_scorer

    model, tok = load_model(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "student_base")
    dev = dolly_small[200:207]
    g = GenConfig(max_new_tokens=6, max_prompt_len=48, batch_size=2, seeds=[10])
    prompts = [r["prompt"] for r in dev]
    one = generate_shard(model, tok, prompts, g, seed=10)
    assert sorted(one) == list(range(len(dev)))
    for world in (2, 3):
        shards = [generate_shard(model, tok, prompts, g, seed=10, rank=r, world=world) for r in range(world)]
        assert sum(len(s) for s in shards) == len(dev) and {k: v for s in shards for k, v in s.items()} == one
    cfg = TrainConfig(select_by="loss", max_prompt_len=48)
    assert make_dev_scorer(dev, tok, cfg)(model) == -bits_per_byte(model, tok, dev, 48)
    rouge = make_dev_scorer(dev, tok, TrainConfig(select_by="rougeL", dev_max_new_tokens=6, max_prompt_len=48))
    assert rouge(model) == rouge(model) >= 0.0
