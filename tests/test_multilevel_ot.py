"""MultiLevelOT (``baselines/multilevel_ot.py``): properties of its pure functions and of the method.

Parity with the reference code: ``tests/test_parity_multilevel_ot.py``. The registry-parametrised tests of
``tests/test_baselines.py`` and ``tests/test_model_classes.py`` train it with the other methods.
"""

from __future__ import annotations

import math

import pytest
import torch

from baselines.multilevel_ot import (MultiLevelOT, MultiLevelOTConfig, by_position, column_mass,
                                     holistic_absolute_difference, multilevel_ot_terms, scaled_softmax,
                                     sequential_log_loss, sinkhorn_distance, sinkhorn_plan, top_k_columns)
from dwakd.align.responses import response_mask
from dwakd.errors import ConfigError
from dwakd.models import LMOutput, forward
from dwakd.settings import from_dict


def _probs(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g, dtype=torch.float64), -1)


def _batch(seed=0, v_s=70, v_t=90):
    """Random logits and labels of two vocabularies: 3 samples, prompts, different response lengths, padding."""
    g = torch.Generator().manual_seed(seed)
    s_labels = torch.full((3, 10), -100)
    t_labels = torch.full((3, 12), -100)
    for b, (ps, rs, pt, rt) in enumerate([(2, 5, 3, 7), (3, 7, 2, 4), (1, 3, 4, 8)]):
        s_labels[b, ps:ps + rs] = torch.randint(1, v_s, (rs,), generator=g)
        t_labels[b, pt:pt + rt] = torch.randint(1, v_t, (rt,), generator=g)
    s_logits = 2 * torch.randn(3, 10, v_s, generator=g) + 3 * torch.randn(v_s, generator=g)
    t_logits = 2 * torch.randn(3, 12, v_t, generator=g) + 3 * torch.randn(v_t, generator=g)
    return s_logits, s_labels, t_logits, t_labels


def _terms(s_logits, s_labels, t_logits, t_labels, **cfg):
    sm, tm = response_mask(s_labels), response_mask(t_labels)
    return multilevel_ot_terms(s_logits[sm], sm, t_logits[tm], tm, MultiLevelOTConfig(**cfg))


# ---------------------------------------------------------------------------------------------- columns

def test_scaled_softmax_is_invariant_to_an_affine_change_of_the_logits():
    z = torch.randn(4, 30, dtype=torch.float64)
    p = scaled_softmax(z, eps=0.0)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))  # float64 is kept
    torch.testing.assert_close(scaled_softmax(7.0 * z - 3.0, eps=0.0), p)  # std scaling, then softmax's shift
    assert not torch.allclose(scaled_softmax(z, eps=0.0), torch.softmax(z, -1))  # not the plain softmax


@pytest.mark.parametrize("v", [30, 50, 80])
def test_batch_mass_columns_are_the_k_of_largest_total_mass_in_its_order(v):
    z = 2 * torch.randn(12, v) + 3 * torch.randn(v)
    top = top_k_columns(z, 50, "batch_mass")
    p = scaled_softmax(z)
    assert top.shape == (12, min(50, v))
    keep = p.sum(0).argsort(descending=True)[:50]
    torch.testing.assert_close(top, p[:, keep])
    mass = top.sum(0)
    assert torch.all(mass[:-1] >= mass[1:])  # decreasing mass; a column's rows are not sorted
    torch.testing.assert_close(mass, column_mass(z).sort(descending=True).values[:50])
    if v > 50:
        assert top.sum(-1).max() < 1  # truncated: the rows no longer sum to 1


def test_per_position_columns_are_each_rows_largest_probabilities():
    z = 2 * torch.randn(12, 80)
    top = top_k_columns(z, 50, "per_position")
    torch.testing.assert_close(top, scaled_softmax(z).sort(-1, descending=True).values[:, :50])


@pytest.mark.parametrize("order", ["batch_mass", "per_position"])
def test_top_k_columns_do_not_depend_on_the_vocabulary_order(order):
    z = 2 * torch.randn(9, 64) + 3 * torch.randn(64)
    perm = torch.randperm(64)
    torch.testing.assert_close(top_k_columns(z[:, perm], 50, order), top_k_columns(z, 50, order))


@pytest.mark.parametrize("order", ["batch_mass", "per_position"])
def test_top_k_columns_in_blocks_equal_one_call_values_and_gradients(order):
    z = (2 * torch.randn(11, 64)).requires_grad_(True)
    w = torch.randn(11, 50)
    one = top_k_columns(z, 50, order, chunk_rows=None)
    (g_one,) = torch.autograd.grad((one * w).sum(), z)
    blocks = top_k_columns(z, 50, order, chunk_rows=3)
    (g_blocks,) = torch.autograd.grad((blocks * w).sum(), z)
    torch.testing.assert_close(blocks, one)
    torch.testing.assert_close(g_blocks, g_one)
    torch.testing.assert_close(column_mass(z, chunk_rows=4), column_mass(z, chunk_rows=None))


def test_by_position_puts_the_kth_response_position_at_row_k():
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    rows = torch.arange(10.0).reshape(5, 2)
    out = by_position(rows, mask, length=4, width=3)
    assert out.shape == (2, 4, 3)
    assert out[0].tolist() == [[0, 1, 0], [2, 3, 0], [0, 0, 0], [0, 0, 0]]
    assert out[1].tolist() == [[4, 5, 0], [6, 7, 0], [8, 9, 0], [0, 0, 0]]


# ---------------------------------------------------------------------------------------------- terms

def test_holistic_absolute_difference_pairs_the_first_min_lengths_positions():
    s, t = _probs(2, 5, 6, seed=1), _probs(2, 5, 6, seed=2)
    n_s, n_t = torch.tensor([3, 5]), torch.tensor([4, 2])
    had = holistic_absolute_difference(s, t, n_s, n_t)
    torch.testing.assert_close(had, torch.stack([(s[0, :3] - t[0, :3]).abs().sum(-1).mean(),
                                                 (s[1, :2] - t[1, :2]).abs().sum(-1).mean()]))
    assert holistic_absolute_difference(s, s.clone(), n_s, n_t).abs().max() == 0  # identical rows: zero
    s = s.clone().requires_grad_(True)
    holistic_absolute_difference(s, t, n_s, n_t).sum().backward()
    assert torch.all(s.grad[0, 3:] == 0) and torch.all(s.grad[1, 2:] == 0)  # unpaired rows get no gradient
    assert holistic_absolute_difference(s, t, torch.tensor([0, 1]), n_t)[0] == 0  # nothing paired: 0, not NaN


def test_sequential_log_loss_is_a_cross_entropy_of_softmaxed_probabilities():
    """The double softmax (reference issue #4): the rows are probabilities, softmax-ed again. The teacher side
    that minimises it for a given student is the student itself (Gibbs), and its value stays in
    [log w − 1, log(w − 1 + e)] for any rows of non-negative entries summing to at most 1 (w = 50: [2.91, 3.95])."""
    s, t = _probs(2, 4, 50, seed=3), _probs(2, 4, 50, seed=4)
    ours = sequential_log_loss(s, t)
    manual = -(torch.softmax(s, -1) * torch.log_softmax(t, -1)).sum(-1).mean()
    torch.testing.assert_close(ours, manual)
    q_s, q_t = torch.softmax(s, -1), torch.softmax(t, -1)
    kl = (q_s * (q_s.log() - q_t.log())).sum(-1).mean()
    torch.testing.assert_close(ours - sequential_log_loss(s, s), kl)  # = KL(softmax(s) ‖ softmax(t)) ≥ 0
    w = 50
    lo, hi = math.log(w) - 1, math.log(w - 1 + math.e)
    one_hot = torch.eye(w, dtype=torch.float64)[None, :2]  # the extreme rows
    truncated = (s * (s >= s.median(-1, keepdim=True).values))[:, :2]  # top-k-like rows: mass below 1
    for a, b in ((s, t), (one_hot, one_hot.flip(1)), (one_hot, one_hot), (torch.zeros_like(s), t),
                 (truncated, one_hot), (one_hot, truncated)):
        assert lo - 1e-12 <= sequential_log_loss(a, b).item() <= hi + 1e-12
    zero = torch.zeros(1, 3, w, dtype=torch.float64)  # padding rows on both sides: log w
    assert sequential_log_loss(zero, zero).item() == pytest.approx(math.log(w))


def test_sinkhorn_plan_marginals():
    cost = torch.rand(3, 6, 6, dtype=torch.float64)
    plan = sinkhorn_plan(cost, epsilon=0.1, iters=10)
    assert torch.all(plan > 0)
    torch.testing.assert_close(plan.sum(-2), torch.ones(3, 6, dtype=torch.float64))  # the last step: columns
    converged = sinkhorn_plan(cost, epsilon=0.1, iters=500)
    torch.testing.assert_close(converged.sum(-1), torch.ones(3, 6, dtype=torch.float64))  # doubly stochastic
    rect = sinkhorn_plan(torch.rand(4, 7, dtype=torch.float64), 0.5, 3)  # M ≠ N: columns still sum to 1
    torch.testing.assert_close(rect.sum(0), torch.ones(7, dtype=torch.float64))


def test_sinkhorn_distance_is_a_sequence_level_term():
    """Invariant to the order of either side's positions (the plan moves with them); nearly 0 between a
    sequence and itself as ε → 0 (the plan becomes the identity on the zero diagonal)."""
    s, t = _probs(2, 6, 50, seed=5), _probs(2, 6, 50, seed=6)
    d = sinkhorn_distance(s, t)
    assert d.shape == (2,) and torch.all(d > 0)
    perm = torch.randperm(6)
    torch.testing.assert_close(sinkhorn_distance(s[:, perm], t), d)
    torch.testing.assert_close(sinkhorn_distance(s, t[:, perm]), d)
    had = holistic_absolute_difference(s, t, torch.tensor([6, 6]), torch.tensor([6, 6]))
    assert not torch.allclose(holistic_absolute_difference(s[:, perm], t, torch.tensor([6, 6]), torch.tensor([6, 6])),
                              had)  # the token level does see the order
    sharp = 20 * _probs(1, 5, 50, seed=7)  # distinct rows after the softmax at temperature 2
    assert sinkhorn_distance(sharp, sharp, epsilon=1e-3, iters=50).item() < 1e-6
    assert sinkhorn_distance(sharp, sharp).item() > 1e-5  # at ε = 0.1 the entropic plan spreads its mass


# ---------------------------------------------------------------------------------------------- all terms

@pytest.mark.parametrize("order", ["batch_mass", "per_position"])
def test_terms_do_not_depend_on_either_vocabulary_order(order):
    s_logits, s_labels, t_logits, t_labels = _batch()
    ref = _terms(s_logits, s_labels, t_logits, t_labels, column_order=order)
    ps, pt = torch.randperm(s_logits.size(-1)), torch.randperm(t_logits.size(-1))
    got = _terms(s_logits[..., ps], s_labels, t_logits[..., pt], t_labels, column_order=order)
    for a, b in zip(got[:3], ref[:3]):
        torch.testing.assert_close(a, b)


def test_terms_of_a_teacher_equal_to_the_student():
    s_logits, s_labels, _, _ = _batch()
    t = _terms(s_logits, s_labels, s_logits, s_labels)
    assert t.had.abs().max() == 0
    torch.testing.assert_close(t.student_top, t.teacher_top)
    t_other = _terms(s_logits, s_labels, s_logits.roll(1, 0), s_labels.roll(1, 0))
    assert torch.all(t_other.had > 0)


def test_terms_shapes_widths_and_zero_rows():
    s_logits, s_labels, t_logits, t_labels = _batch(v_s=30, v_t=90)
    t = _terms(s_logits, s_labels, t_logits, t_labels)
    m = int(max(response_mask(s_labels).sum(1).max(), response_mask(t_labels).sum(1).max()))
    assert t.student_top.shape == t.teacher_top.shape == (3, m, 50)
    assert torch.all(t.student_top[..., 30:] == 0)  # 30 student columns, zero-padded to the teacher's 50
    n_s = response_mask(s_labels).sum(1)
    for b in range(3):
        assert torch.all(t.student_top[b, n_s[b]:] == 0) and torch.all(t.student_top[b, :n_s[b]].sum(-1) > 0)
    assert t.had.shape == t.sinkhorn.shape == (3,) and t.sl.shape == ()


def test_terms_with_no_response_anywhere_are_zero():
    s_logits, _, t_logits, _ = _batch()
    empty_s, empty_t = torch.full((3, 10), -100), torch.full((3, 12), -100)
    t = _terms(s_logits, empty_s, t_logits, empty_t)
    assert t.had.abs().sum() == 0 and t.sl == 0 and t.sinkhorn.abs().sum() == 0


# ---------------------------------------------------------------------------------------------- method

def _method(**over):
    return MultiLevelOT(from_dict(MultiLevelOTConfig, over, "multilevel_ot"), None, object())


def test_loss_is_the_weighted_sum_of_the_logged_terms():
    s_logits, s_labels, t_logits, t_labels = _batch()
    batch = {"student": {"labels": s_labels}, "teacher": {"labels": t_labels}}
    logits = s_logits.clone().requires_grad_(True)
    loss, logs = _method().loss(batch, LMOutput(logits=logits), LMOutput(logits=t_logits))
    assert set(logs) == {"ce", "had", "sl", "sinkhorn"}
    torch.testing.assert_close(loss.detach(), logs["ce"] + 1.5 * (logs["had"] + 0.1 * logs["sl"]
                                                                  + 1e-4 * logs["sinkhorn"]))
    n = int(response_mask(s_labels).sum())
    t = _terms(s_logits, s_labels, t_logits, t_labels)
    torch.testing.assert_close(logs["had"], t.had.mean() * n)
    torch.testing.assert_close(logs["sinkhorn"], t.sinkhorn.sum() * n)
    loss.backward()
    assert torch.all(logits.grad[~response_mask(s_labels)] == 0)  # CE and KD read the response positions only
    _, logs2 = _method(sl_weight=0.0, sinkhorn_weight=0.0, kd_weight=2.0).loss(
        batch, LMOutput(logits=s_logits), LMOutput(logits=t_logits))
    torch.testing.assert_close(logs2["had"], logs["had"])


@pytest.mark.parametrize("over, message", [
    ({"column_order": "mass"}, r"multilevel_ot\.column_order: expected one of \['batch_mass', 'per_position'\]"),
    ({"top_k": 0}, r"multilevel_ot\.top_k: expected a value >= 1, got 0"),
    ({"sinkhorn_epsilon": 0.0}, r"multilevel_ot\.sinkhorn_epsilon: expected a value > 0.0"),
    ({"kd_weight": -1.0}, r"multilevel_ot\.kd_weight: expected a value >= 0.0"),
])
def test_bad_options_are_named(over, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(MultiLevelOTConfig, over, "multilevel_ot")


def test_needs_a_teacher():
    with pytest.raises(ConfigError, match="multilevel_ot: needs a teacher model"):
        MultiLevelOT(MultiLevelOTConfig(), None, None)


def test_teacher_response_rows_give_the_loss_of_full_teacher_logits(tiny_pair, dolly_small):
    """The loop asks the teacher for its response rows only (``teacher_logit_rows = "response"``): same loss as
    with the full ``[B, L, V]`` teacher logits, on the tiny pair's two vocabularies."""
    from dwakd.data import collate, encode_records
    from dwakd.models import load_model, load_tokenizer

    torch.manual_seed(0)
    student, stok = load_model(tiny_pair / "student_base"), load_tokenizer(tiny_pair / "student_base")
    teacher, ttok = load_model(tiny_pair / "teacher"), load_tokenizer(tiny_pair / "teacher")
    assert len(stok) != len(ttok)
    batch = {role: collate(encode_records(dolly_small[9:12], tok, 48, 96), tok.pad_token_id or tok.eos_token_id)
             for role, tok in (("student", stok), ("teacher", ttok))}
    tb = batch["teacher"]
    with torch.no_grad():
        s_out = forward(student, batch["student"]["input_ids"], batch["student"]["attention_mask"])
        full = forward(teacher, tb["input_ids"], tb["attention_mask"])
        rows = forward(teacher, tb["input_ids"], tb["attention_mask"], rows=response_mask(tb["labels"]))
    m = MultiLevelOT(MultiLevelOTConfig(), student, teacher)
    a, logs_a = m.loss(batch, s_out, full)
    b, logs_b = m.loss(batch, s_out, rows)
    torch.testing.assert_close(a, b)
    assert all(torch.isfinite(v) for v in logs_a.values()) and logs_a["had"] > 0
