"""On-policy distillation: the KD part of a training step reads the student's own samples (DSKD v2's on-policy
mode, github.com/songmzhang/DSKDv2 code/distillation.py:145-281; docs/methods.md "On-policy distillation").

The training loop (``dwakd.train.Trainer``) uses three pieces from here:

* **the schedule** (``plan``): from epoch ``on_policy_after_epochs`` on, each micro-batch is the student's samples
  with probability ``on_policy_ratio`` (DSKD v2: ``random.random() < stu_gen_ratio`` per micro-batch). The draw
  and the sampling seed come from a generator seeded by ``(seed, epoch, micro-batch)``: a function of the run's
  settings only, never of the process that runs the micro-batch or of where a run was stopped and resumed;
* **the samples** (``sample``): one ``generate`` call for the micro-batch's prompts, left-padded, without
  gradient, in eval mode (then back to the mode it was in), with a fresh ``GenerationConfig`` (so a model's own
  generation defaults, e.g. a repetition penalty, do not apply: DSKD v2 builds its own too); at most
  ``max_len − max_prompt_len`` new tokens (``new_tokens``), DSKD v2's budget (its prompts are padded to
  ``max_prompt_length``, and ``max_new_tokens = max_length − prompt width``);
* **the batch** (``sample_item``): the student side is the prompt's ids followed by the sampled ids, as sampled
  (through the first EOS, which is kept; a sample cut by the length limit has none); the teacher side is the
  teacher's prompt ids followed by the teacher's tokenisation of the decoded sample, as ``dwakd.data
  .encode_sample`` tokenises a gold response (EOS appended only when the student ended its sample with EOS).

Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import random

IGNORE = -100

__all__ = ["cut_at_eos", "new_tokens", "plan", "prompt_length", "sample", "sample_item"]


def plan(seed: int, epoch: int, micro: int, ratio: float) -> tuple[bool, int]:
    """``(drawn, sampling seed)`` of micro-batch ``micro`` of ``epoch``: whether its KD part reads the student's
    samples (probability ``ratio``: 0 never, 1 always) and the seed of its sampling."""
    rng = random.Random(f"dwakd.on_policy/{seed}/{epoch}/{micro}")  # str seeds hash with sha512: stable
    return rng.random() < ratio, rng.getrandbits(63)


def prompt_length(labels: list[int]) -> int:
    """The prompt tokens of an encoded item: its leading −100 labels (``dwakd.data.encode_sample``)."""
    n = 0
    while n < len(labels) and labels[n] == IGNORE:
        n += 1
    return n


def new_tokens(max_len: int, max_prompt_len: int, cap: int = 0) -> int:
    """The most tokens a sample may have: ``max_len − max_prompt_len`` (DSKD v2, distillation.py:163-164 with its
    prompts padded to ``max_prompt_length``), at most ``cap`` (> 0)."""
    room = max_len - max_prompt_len
    return min(room, cap) if cap else room


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """``ids`` up to and including the first ``eos_id`` (all of them when there is none)."""
    return ids[:ids.index(eos_id) + 1] if eos_id in ids else ids


def sample(model, prompts: list[list[int]], *, pad_id: int, eos_id: int, temperature: float, top_p: float,
           top_k: int, max_new_tokens: int, seed: int, amp: bool = False) -> list[list[int]]:
    """One sampled response per prompt (token ids, each through its first EOS, at most ``max_new_tokens`` ≥ 1):
    ``prompts`` left-padded to the longest, one ``model.generate`` call with ``do_sample`` at ``temperature`` /
    ``top_p`` / ``top_k`` (0: off). No gradient; the model runs in eval mode and is put back in its mode; the RNG
    is seeded with ``seed`` first; ``amp``: bf16 autocast."""
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"on-policy sampling: max_new_tokens must be at least 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                           max_new_tokens=max_new_tokens,
                           pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)  # CPU and every CUDA device
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
    finally:
        model.train(was_training)
    return [cut_at_eos(row[width:].tolist(), eos_id) for row in out]


def sample_item(item: dict, response: list[int], student_tokenizer, teacher_tokenizer, max_len: int) -> dict:
    """The KD item of one sampled response (module docstring): ``{"index", "input_ids", "labels"}`` of the student
    (labels −100 on the prompt) and, when the gold ``item`` has a teacher side, ``"teacher"`` likewise."""
    p = prompt_length(item["labels"])
    out = {"index": item["index"], "input_ids": (item["input_ids"][:p] + response)[:max_len],
           "labels": ([IGNORE] * p + response)[:max_len]}
    if "teacher" in item:
        t = item["teacher"]
        tp = prompt_length(t["labels"])
        ended = bool(response) and response[-1] == student_tokenizer.eos_token_id
        text = student_tokenizer.decode(response[:-1] if ended else response, skip_special_tokens=True)
        o = teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
        o = o + [teacher_tokenizer.eos_token_id] if ended else o
        out["teacher"] = {"index": t.get("index", item["index"]), "input_ids": (t["input_ids"][:tp] + o)[:max_len],
                          "labels": ([IGNORE] * tp + o)[:max_len]}
    return out
