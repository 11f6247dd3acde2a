"""Parity with the reference code of DSKD v1 (songmzhang/DSKD): our losses on the inputs of
``tests/fixtures/parity/dskd/`` against the numbers the reference produced on them.

The fixtures are written by ``tests/fixtures/parity/generate_dskd.py`` (commit, command and contents in
``tests/fixtures/parity/README.md``); no reference code is needed here. Values match within 1e-5 relative, or the
difference is a documented deviation (``docs/deviations.md``) that a test below reproduces explicitly.

The reference stores batches already shifted (``input_ids = full[:-1]``, ``label = full[1:]``); ours keeps the
full sequence with ``labels[:, k + 1]`` predicted at position k (``_ours``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dwakd.align.cma as cma_mod
from baselines.uld import uld_pairs
from dwakd.align.responses import response_tokens, tokens_of
from dwakd.align.tokens import build_vocab_map, dtw_align, invert_vocab_map, one_to_one
from dwakd.losses.divergences import divergence, js_divergence
from dwakd.models import LMOutput
from dwakd.registry import get_method
from dwakd.settings import from_dict

FIX = Path(__file__).parent / "fixtures" / "parity" / "dskd"
RTOL = 1e-5


def _load(name: str):
    return torch.load(FIX / name, weights_only=True)


def _close(ours, ref, atol: float = 1e-6):
    ref = torch.as_tensor(ref, dtype=torch.float32)
    torch.testing.assert_close(torch.as_tensor(ours).detach().float(), ref, rtol=RTOL, atol=atol)


def _ours(ids: torch.Tensor, label: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference layout → ours: one more input position (never a response position), labels shifted right."""
    col = torch.full_like(ids[:, :1], pad)
    return torch.cat([ids, col], 1), torch.cat([torch.full_like(label[:, :1], -100), label], 1)


def _extend(x: torch.Tensor) -> torch.Tensor:
    """Logits / hidden states for the extra last position (masked everywhere; zeros)."""
    return torch.cat([x, torch.zeros_like(x[:, :1])], 1)


def _cfg(name: str, **over):
    return from_dict(get_method(name).Config, over, name)


class _Tok:
    """Token strings of a fixture vocabulary (what MinED reads of a tokenizer)."""

    def __init__(self, tokens: list[str], eos: str):
        self.tokens = list(tokens)
        self.eos_token_id = self.pad_token_id = self.tokens.index(eos)
        self.is_fast = False

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[int(i)] for i in ids]

    def __len__(self):
        return len(self.tokens)


class _LM(nn.Module):
    """The embedding table and LM head a method reads (never called)."""

    def __init__(self, embed: torch.Tensor | None = None, head: torch.Tensor | None = None, v: int = 0, d: int = 1):
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(embed) if embed is not None else nn.Embedding(v, d)
        self.head = nn.Linear(self.emb.embedding_dim, self.emb.num_embeddings, bias=False)
        if head is not None:
            self.head.weight.data.copy_(head)

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head


# ------------------------------------------------------------------------------------------ divergences

DIV = _load("divergences.pt")
NAMES = ["fkl", "rkl", "js", "skl", "srkl", "akl"]


@pytest.mark.parametrize("name", NAMES)
def test_divergence_matches_reference(name):
    s, t, target = DIV["student_logits"], DIV["teacher_logits"], DIV["target"]
    _close(divergence(name, s, t, target != -100, DIV["tau"]), DIV["sum"][name])
    every = torch.ones_like(target, dtype=torch.bool)  # the reference's reduction="none" masks nothing
    _close(divergence(name, s, t, every, DIV["tau"], reduction="none"), DIV["none"][name])


def test_adaptive_kl_identical_distributions_give_zero_where_the_reference_gives_nan():
    """Deviation (docs/deviations.md, Divergences): g_head + g_tail = 0 → ½/½ weights, AKL = 0 (DSKD: 0/0)."""
    c = DIV["eq"]
    ref = c["akl_none"][0]
    ours = divergence("akl", c["student_logits"], c["teacher_logits"], torch.ones(1, 3, dtype=torch.bool),
                      DIV["tau"], reduction="none")[0]
    assert torch.isnan(ref[1]) and ours[1].item() == 0.0
    _close(ours[[0, 2]], ref[[0, 2]])


def test_adaptive_kl_tail_includes_cumulative_mass_equal_to_mu():
    """A uniform teacher over 4 entries: cumulative mass exactly 0.5 after two; the tail takes both (≤ μ)."""
    c = DIV["tie"]
    pt = torch.softmax(c["teacher_logits"][0, 0] / DIV["tau"], -1).sort().values
    assert pt.cumsum(-1)[1].item() == 0.5
    ours = divergence("akl", c["student_logits"], c["teacher_logits"], torch.ones(1, 2, dtype=torch.bool),
                      DIV["tau"], reduction="none")
    _close(ours, c["akl_none"])


def test_js_epsilon_is_below_fp32_resolution():
    """Deviation (Divergences): exact ``log m`` instead of DSKD's ``log(· + 1e-9)``. On near-identical
    distributions (JS ≈ 2e-8) both are at the fp32 noise floor: they agree with float64 to 1e-7."""
    c = DIV["close"]
    s, t = c["student_logits"], c["teacher_logits"]
    ours = js_divergence(s, t, torch.ones(1, 3, dtype=torch.bool), DIV["tau"], reduction="none")
    ls, lt = (torch.log_softmax(x.double() / DIV["tau"], -1) for x in (s, t))
    lm = torch.logaddexp(ls, lt) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    exact = 0.5 * (lt.exp() * (lt - lm)).sum(-1) + 0.5 * (ls.exp() * (ls - lm)).sum(-1)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(c["js_none"].double(), exact, rtol=0, atol=1e-7)


VKD = _load("vanilla_kd.pt")


@pytest.mark.parametrize("name", NAMES)
def test_vanilla_kd_matches_reference_forward(name):
    V = VKD["student_logits"].size(-1)
    ids, labels = _ours(VKD["input_ids"], VKD["label"], 0)
    batch = {"student": {"input_ids": ids, "labels": labels}}
    m = get_method("vanilla_kd")(_cfg("vanilla_kd", divergence=name), _LM(v=V), _LM(v=V))
    loss, logs = m.loss(batch, LMOutput(logits=_extend(VKD["student_logits"])),
                        LMOutput(logits=_extend(VKD["teacher_logits"])))
    _close(logs["ce"], VKD["nll_loss"][name])
    _close(logs["kd"], VKD["kd_loss"][name])
    _close(loss, VKD["loss"][name])


# ------------------------------------------------------------------------------------------ ULD

def test_uld_matches_reference_forward():
    u = _load("uld.pt")
    s_ids, s_lab = _ours(u["student_input_ids"], u["student_label"], 1)
    t_ids, t_lab = _ours(u["teacher_input_ids"], u["teacher_label"], 1)
    batch = {"student": {"input_ids": s_ids, "labels": s_lab}, "teacher": {"input_ids": t_ids, "labels": t_lab}}
    m = get_method("uld")(_cfg("uld"), None, object())  # variant "dskd", kd_rate 0.5, τ 1
    loss, logs = m.loss(batch, LMOutput(logits=_extend(u["student_logits"])),
                        LMOutput(logits=_extend(u["teacher_logits"])))
    _close(logs["ce"], u["nll_loss"])
    _close(logs["uld"], u["uld_loss"])
    _close(loss, u["loss"])
    # the pairing: min(n_s, n_t) pairs per sample (6/6 and 4/6 student/teacher response tokens)
    assert (s_lab != -100).sum(1).tolist() == [6, 4] and (t_lab != -100).sum(1).tolist() == [6, 6]
    _, sample = uld_pairs(_extend(u["student_logits"]), _extend(u["teacher_logits"]),
                          s_lab.roll(-1, 1) != -100, t_lab.roll(-1, 1) != -100)
    assert sample.tolist() == [0] * 6 + [1] * 4


# ------------------------------------------------------------------------------------------ MinED

MINED = _load("mined.pt")
DTW = json.loads((FIX / "dtw.json").read_text(encoding="utf-8"))
DTW_CALLS = [c for conv in ("read", "predicted") for c in MINED[conv]["dtw_calls"]]


@pytest.mark.parametrize("case", DTW + DTW_CALLS, ids=lambda c: " ".join(c["student_tokens"])[:40])
def test_dtw_path_and_one_to_one_match_reference(case):
    """Reference: ``dtw(teacher, student)``; ours: ``dtw_align(student, teacher)`` (pairs swapped)."""
    path = dtw_align(case["student_tokens"], case["teacher_tokens"])
    assert path == [(j, i) for i, j in case["matches"]]
    ref_1to1 = {j: ts[0] for j, ts in enumerate(case["student_to_teacher"]) if len(ts) == 1}
    assert one_to_one(path) == ref_1to1


def _mined():
    stok, ttok = _Tok(MINED["student_vocab"], "<|endoftext|>"), _Tok(MINED["teacher_vocab"], "</s>")
    Vs, Vt = len(stok), len(ttok)
    # the fixture's map (the reference loads it from JSON) was made with the suite's earlier guess at FuseLLM's
    # rule, which is now the named "normalised" rule; the "reference" rule is checked against the authors' real
    # maps in tests/test_realtok.py. The map is an input here: the loss parity does not depend on the rule.
    m = get_method("mined")(_cfg("mined", map_rule="normalised"), _LM(v=Vs), _LM(v=Vt), stok, ttok)
    assert m.t2s.tolist() == MINED["t2s"].tolist()  # our map = the fixture's
    # DSKD keeps the first teacher id per student id; here that is also our best-matching choice
    assert m.s2t.tolist() == MINED["s2t_first"].tolist() == invert_vocab_map(MINED["t2s"].tolist(), Vs)
    s_ids, s_lab = _ours(MINED["student_input_ids"], MINED["student_label"], stok.pad_token_id)
    t_ids, t_lab = _ours(MINED["teacher_input_ids"], MINED["teacher_label"], ttok.pad_token_id)
    batch = {"student": {"input_ids": s_ids, "labels": s_lab}, "teacher": {"input_ids": t_ids, "labels": t_lab}}
    outs = LMOutput(logits=_extend(MINED["student_logits"])), LMOutput(logits=_extend(MINED["teacher_logits"]))
    return m, batch, outs


def test_vocab_map_matches_fixture():
    tv = {t: i for i, t in enumerate(MINED["teacher_vocab"])}
    sv = {t: i for i, t in enumerate(MINED["student_vocab"])}
    assert build_vocab_map(tv, sv, rule="normalised", workers=1, overrides={0: 0}) == MINED["t2s"].tolist()


def _uses_teacher(b, sp, shape) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[b, sp] = True
    return mask[:, :-1]  # back to the reference layout


def test_mined_matches_reference_on_predicted_tokens():
    """Our convention (DTW over the tokens each position predicts) run through the reference code."""
    m, batch, (s_out, t_out) = _mined()
    ref = MINED["predicted"]
    b, sp, _ = m.align(batch["student"]["labels"], batch["teacher"]["labels"])
    assert torch.equal(_uses_teacher(b, sp, batch["student"]["labels"].shape), ref["uses_teacher"])
    loss, logs = m.loss(batch, s_out, t_out)
    _close(logs["ce"], ref["nll_loss"])
    _close(logs["kd"], ref["forward_kl"])
    _close(loss, ref["loss"])


def _read_token_align(m, batch):
    """DSKD's own convention, for the test below: DTW over the tokens *read* at the response positions
    (``input_ids[k]``) and the check ``t2s[x_t] == x_s``; gold targets unchanged."""

    def align(sl, tl):
        out = ([], [], [])
        for b in range(sl.size(0)):
            s_pos, _ = response_tokens(sl[b])
            t_pos, _ = response_tokens(tl[b])
            xs = batch["student"]["input_ids"][b, s_pos].tolist()
            xt = batch["teacher"]["input_ids"][b, t_pos].tolist()
            path = dtw_align(tokens_of(m.stok, xs), tokens_of(m.ttok, xt))
            for i, j in sorted(one_to_one(path).items()):
                if m._t2s_list[xt[j]] == xs[i]:
                    out[0].append(b)
                    out[1].append(s_pos[i])
                    out[2].append(t_pos[j])
        return out

    return align


def test_mined_token_convention_deviation_is_the_only_difference():
    """Deviation (MinED): we align the predicted tokens, DSKD the read ones. Ours differs from the reference's
    own run; with the read-token alignment swapped in, it reproduces that run."""
    m, batch, (s_out, t_out) = _mined()
    ref = MINED["read"]
    loss, logs = m.loss(batch, s_out, t_out)
    assert abs(logs["kd"].item() - ref["forward_kl"]) > 0.5
    m.align = _read_token_align(m, batch)
    b, sp, _ = m.align(batch["student"]["labels"], batch["teacher"]["labels"])
    assert torch.equal(_uses_teacher(b, sp, batch["student"]["labels"].shape), ref["uses_teacher"])
    loss, logs = m.loss(batch, s_out, t_out)
    _close(logs["ce"], ref["nll_loss"])
    _close(logs["kd"], ref["forward_kl"])
    _close(loss, ref["loss"])


def test_mined_reference_kd_term_vanishes_with_fp32_logits():
    """Reference-code bug we do not reproduce: with fp32 student logits DSKD's MinED writes the aligned teacher
    logits into the student's own logits (``logits[i].float()`` is no copy), so its KD term is 0. With bf16
    logits (DSKD's scripts) it is not; ours equals that run whatever the dtype."""
    ref32, ref16 = MINED["predicted_fp32"], MINED["predicted"]
    assert ref32["forward_kl"] == 0.0
    _close(ref32["loss"], 0.5 * ref32["nll_loss"])
    m, batch, (s_out, t_out) = _mined()
    _, logs = m.loss(batch, s_out, t_out)  # fp32 logits
    _close(logs["kd"], ref16["forward_kl"])


# ------------------------------------------------------------------------------------------ DSKD-CMA

CMA = _load("cma.pt")


def _cma(c):
    s_ids, s_lab = _ours(c["student_input_ids"], c["student_label"], 1)
    t_ids, t_lab = _ours(c["teacher_input_ids"], c["teacher_label"], 1)
    batch = {"student": {"input_ids": s_ids, "labels": s_lab}, "teacher": {"input_ids": t_ids, "labels": t_lab}}
    student, teacher = _LM(c["student_embed"], c["student_head"]), _LM(c["teacher_embed"], c["teacher_head"])
    m = get_method("dskd_cma")(_cfg("dskd_cma"), student, teacher)  # fkl, τ 2, α 0.5
    with torch.no_grad():  # the reference's projectors: nn.Sequential(nn.Linear) named query / t2s / s2t
        for name in ("query", "t2s", "s2t"):
            lin = getattr(m.cma, name)
            lin.weight.copy_(c["projectors"][name]["0.weight"])
            lin.bias.copy_(c["projectors"][name]["0.bias"])
    s_out = LMOutput(logits=_extend(c["student_logits"]), hidden=_extend(c["student_hidden"]))
    t_out = LMOutput(logits=_extend(c["teacher_logits"]), hidden=_extend(c["teacher_hidden"]))
    return m, batch, s_out, t_out


def _check_cma(m, batch, s_out, t_out, c):
    loss, logs = m.loss(batch, s_out, t_out)
    ref = c["logs"]
    _close(logs["ce"], ref["nll_loss"])
    _close(logs["ce_t2s"], ref["t2s_ce_loss"])
    _close(logs["kd_stu"], ref["t2s_kd_loss"])
    _close(logs["kd_tea"], ref["s2t_kd_loss"])
    assert logs["t2s_acc"].item() == ref["t2s_acc"]
    _close(loss, c["loss"])
    loss.backward()
    for name in ("query", "t2s", "s2t"):
        lin = getattr(m.cma, name)
        _close(lin.weight.grad, c["grads"][name]["0.weight"], atol=1e-6)
        _close(lin.bias.grad, c["grads"][name]["0.bias"], atol=1e-6)


def test_cma_matches_reference_without_prompt_or_padding():
    """One unpadded sample without a prompt: every position is a response position, so our per-sequence std
    over the response positions is DSKD's std over the whole tensor; terms and projector gradients match."""
    c = CMA["b1_noprompt"]
    _check_cma(*_cma(c), c)


def _reference_std(c):
    """``scale_norm`` with DSKD's three batch-wide stds (whole tensor: prompt, padding and id-0 lookups)."""
    hidden = _extend(c["teacher_hidden"])

    def norm(x, mask):
        if x.size(-1) == 2 * c["d_t"]:
            return x / c["std"]["index_embeds"]
        return x / c["std"]["hidden" if torch.equal(x, hidden) else "target_embeds"]

    return norm


def test_cma_std_deviation_is_the_only_difference_on_a_padded_batch(monkeypatch):
    """Deviation (Cross-model attention): N(x) uses a per-sequence std over response positions, DSKD one std
    over the batch tensor. On a batch with prompts and padding the terms differ; with DSKD's three stds
    substituted, everything else (masking, e(y) lookups) gives the reference's values and gradients."""
    c = CMA["b2_padded"]
    m, batch, s_out, t_out = _cma(c)
    _, logs = m.loss(batch, s_out, t_out)
    assert abs(logs["ce_t2s"].item() / c["logs"]["t2s_ce_loss"] - 1) > 1e-3
    monkeypatch.setattr(cma_mod, "scale_norm", _reference_std(c))
    _check_cma(*_cma(c), c)
