"""Parity of same-vocabulary DSKD (``baselines/dskd.py``) with the reference code (songmzhang/DSKD
``code/criterions/dual_space_kd.py``): our loss on the inputs of ``tests/fixtures/parity/dskd_same_vocab/dskd.pt``
against the numbers the reference produced on them, for each of the six divergences.

The fixture is written by ``tests/fixtures/parity/generate_dskd_same_vocab.py`` (commit, command and contents in
``tests/fixtures/parity/README.md``). The reference stores batches already shifted (``input_ids = full[:-1]``,
``label = full[1:]``); ours keeps the full sequence, so one position (never a response position) is appended.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dwakd.models import LMOutput
from dwakd.registry import get_method
from dwakd.settings import from_dict

FIX = Path(__file__).parent / "fixtures" / "parity" / "dskd_same_vocab"
CASE = torch.load(FIX / "dskd.pt", weights_only=True)
NAMES = ["fkl", "rkl", "js", "skl", "srkl", "akl"]


class _LM(nn.Module):
    """The LM head a method reads (never called)."""

    def __init__(self, head: torch.Tensor):
        super().__init__()
        self.head = nn.Linear(head.size(1), head.size(0), bias=False)
        self.head.weight.data.copy_(head)

    def get_output_embeddings(self):
        return self.head


def _extend(x: torch.Tensor) -> torch.Tensor:
    """One more position at the end (zeros: it is never a response position)."""
    return torch.cat([x, torch.zeros_like(x[:, :1])], 1)


def _close(ours, ref, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(ours).detach().float(), torch.as_tensor(ref, dtype=torch.float32),
                               rtol=1e-5, atol=atol)


def test_fixture_records_the_reference_commit_and_a_mixed_accuracy():
    meta = json.loads((FIX / "meta.json").read_text())
    assert meta["commit"] == "077337ac989045ccf11a6dd927418e3cf4f40971"
    assert "code/criterions/dual_space_kd.py" in meta["files"]
    n = int((CASE["label"] != -100).sum())
    assert all(0 < r["logs"]["t2s_acc"] < n for r in CASE["runs"].values())


@pytest.mark.parametrize("name", NAMES)
def test_dskd_matches_the_reference_terms_and_gradients(name):
    c, ref = CASE, CASE["runs"][name]
    labels = torch.cat([torch.full_like(c["label"][:, :1], -100), c["label"]], 1)  # ours: labels[:, k + 1] at k
    m = get_method("dskd")(from_dict(get_method("dskd").Config, {"divergence": name}, "dskd"),
                           _LM(c["student_head"]), _LM(c["teacher_head"]))  # α 0.5, τ 2: the generator's
    with torch.no_grad():  # the reference projectors: nn.Sequential(nn.Linear) named t2s / s2t
        for k in ("t2s", "s2t"):
            getattr(m, k).weight.copy_(c["projectors"][k]["0.weight"])
            getattr(m, k).bias.copy_(c["projectors"][k]["0.bias"])
    s_logits = _extend(c["student_logits"]).requires_grad_(True)
    s_hidden = _extend(c["student_hidden"]).requires_grad_(True)
    s_out = LMOutput(logits=s_logits, hidden=s_hidden)
    t_out = LMOutput(logits=_extend(c["teacher_logits"]), hidden=_extend(c["teacher_hidden"]))
    loss, logs = m.loss({"student": {"labels": labels}}, s_out, t_out)
    r = ref["logs"]
    _close(logs["ce"], r["nll_loss"])
    _close(logs["ce_t2s"], r["t2s_ce_loss"])
    _close(logs["kd_stu"], r["t2s_kd_loss"])
    _close(logs["kd_tea"], r["s2t_kd_loss"])
    assert logs["t2s_acc"].item() == r["t2s_acc"]
    _close(loss, ref["loss"])
    loss.backward()
    for k in ("t2s", "s2t"):
        _close(getattr(m, k).weight.grad, ref["grads"][k]["0.weight"])
        _close(getattr(m, k).bias.grad, ref["grads"][k]["0.bias"])
    _close(s_logits.grad[:, :-1], ref["grad_student_logits"])
    _close(s_hidden.grad[:, :-1], ref["grad_student_hidden"])
    assert torch.all(s_logits.grad[:, -1] == 0) and torch.all(s_hidden.grad[:, -1] == 0)
