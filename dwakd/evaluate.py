"""Evaluation protocol of DSKD / DWA-KD: sampled generation, ROUGE-L F1, and response bits per byte.

* Sampling: temperature 1.0, top-p 1.0, top-k 0, no_repeat_ngram_size 6, prompt left-padded and cut to its
  first ``max_prompt_len`` tokens, at most ``max_new_tokens`` new tokens, batched with a KV cache; one run
  per generation seed; mean ± std over seeds.
* ROUGE-L: Google ``rouge_score`` F1 with stemming, max over the references, × 100.
* Bits per byte: the response's negative log-likelihood under teacher forcing (EOS included) divided by
  ``ln 2 ×`` its UTF-8 byte count. It does not depend on the tokenizer, so teacher and students compare.
  One forward pass per length-sorted, right-padded batch: cheap, so it covers the whole set
  (``GenConfig.bpb_limit``, default 0 = all) while sampling covers the first ``GenConfig.limit`` prompts.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from dwakd.data import copy_baseline
from dwakd.losses.divergences import token_nll
from dwakd.sampling import SamplingConfig

_SCORER = None


def rouge_l(prediction: str, references: list[str]) -> float:
    """ROUGE-L F1 × 100 of ``prediction`` against the best of ``references`` (stemmed, Google rouge_score)."""
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100.0 * max(_SCORER.score(ref, prediction)["rougeL"].fmeasure for ref in references)


@dataclass
class GenConfig(SamplingConfig):
    """Decoding settings of the protocol (DSKD's evaluation scripts): the sampling (``SamplingConfig``, its
    defaults), the generation seeds, and how many records are scored."""

    seeds: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    max_len: int = 0  # > 0: prompt + new tokens ≤ max_len (per batch: the longest prompt of the batch counts)
    # ``evaluate_model``: sampled ROUGE-L on the first ``limit`` records of a set, bits per byte (cheap: one
    # teacher-forced pass) on the first ``bpb_limit``; 0 = all (profiles' eval.limit, eval.bpb_limit)
    limit: int = 0
    bpb_limit: int = 0


def _prompt_ids(tokenizer, prompts: list[str], cfg: GenConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Each prompt's token ids (cut to ``max_prompt_len``) and the batches of prompt numbers: a fixed
    (length-sorted) order cut into ``batch_size`` chunks."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][: cfg.max_prompt_len] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    return ids, [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]


def _sample_chunk(model, tokenizer, ids: list[list[int]], chunk: list[int], cfg: GenConfig, device) -> list[str]:
    """One batch of sampled responses (the prompts ``chunk`` of ``ids``, left-padded), with the current RNG."""
    pad = tokenizer.pad_token_id
    L = max(len(ids[i]) for i in chunk)
    input_ids = torch.full((len(chunk), L), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), L), dtype=torch.long)
    for b, i in enumerate(chunk):  # left padding
        input_ids[b, L - len(ids[i]):] = torch.tensor(ids[i])
        mask[b, L - len(ids[i]):] = 1
    new_tokens = cfg.max_new_tokens if cfg.max_len <= 0 else min(cfg.max_new_tokens, cfg.max_len - L)
    if new_tokens < 1:
        raise ValueError(f"generate: a prompt of {L} tokens leaves no room below max_len={cfg.max_len}")
    gen = model.generate(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size, max_new_tokens=new_tokens,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True,
    )
    return [tokenizer.decode(gen[b, L:], skip_special_tokens=True).strip() for b in range(len(chunk))]


def _seed_all(seed: int, device) -> None:
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], cfg: GenConfig, seed: int) -> list[str]:
    """Sample one response per prompt; batches are formed in a fixed (length-sorted) order so a seed
    reproduces the same text."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, chunks = _prompt_ids(tokenizer, prompts, cfg)
    out: list[str] = [""] * len(ids)
    _seed_all(seed, device)
    for chunk in chunks:
        for i, text in zip(chunk, _sample_chunk(model, tokenizer, ids, chunk, cfg, device)):
            out[i] = text
    model.train(was_training)
    return out


def chunk_seed(seed: int, k: int) -> int:
    """The sampling seed of batch ``k`` in ``generate_shard``."""
    return seed * 1_000_003 + k


@torch.no_grad()
def generate_shard(model, tokenizer, prompts: list[str], cfg: GenConfig, seed: int, rank: int = 0,
                   world: int = 1) -> dict[int, str]:
    """Process ``rank`` of ``world``'s share of the sampled responses: ``{prompt number: response}``.

    The batches are ``generate``'s (length-sorted, ``batch_size``); batch ``k`` goes to process ``k % world``
    and is sampled with the seed ``chunk_seed(seed, k)``, so every response is the same whatever ``world`` (the
    union over the ranks of ``world`` processes equals the single-process result). It is not ``generate``'s
    text for the same seed: ``generate`` draws every batch from one random stream started once."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, chunks = _prompt_ids(tokenizer, prompts, cfg)
    out: dict[int, str] = {}
    for k in range(rank, len(chunks), world):
        _seed_all(chunk_seed(seed, k), device)
        out.update(zip(chunks[k], _sample_chunk(model, tokenizer, ids, chunks[k], cfg, device)))
    model.train(was_training)
    return out


def _scored_tokens(tokenizer, prompt: str, response: str, max_prompt_len: int,
                   max_len: int) -> tuple[list[int], list[int], int]:
    """``(prompt ids, scored response ids, UTF-8 bytes of the scored response part)``: the prompt cut to its
    first ``max_prompt_len`` tokens, the response tokens + EOS cut so that the whole is at most ``max_len``
    (a cut response counts only the bytes of the tokens kept)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_prompt_len]
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    o = enc["input_ids"] + [tokenizer.eos_token_id]
    room = max_len - len(p)
    if len(o) > room:  # truncated: count only the bytes of the tokens that were scored
        o = o[:room]
        end = enc["offset_mapping"][room - 1][1]
        n_bytes = len(response[:end].encode("utf-8"))
    else:
        n_bytes = len(response.encode("utf-8"))
    return p, o, n_bytes


@torch.no_grad()
def response_nll_bytes(model, tokenizer, prompt: str, response: str, max_prompt_len: int = 256,
                       max_len: int = 1024) -> tuple[float, int]:
    """(NLL in nats of the response tokens + EOS, UTF-8 bytes of the response part that was scored); one
    forward pass for one record (``response_bits_bytes`` batches the same computation)."""
    device = next(model.parameters()).device
    p, o, n_bytes = _scored_tokens(tokenizer, prompt, response, max_prompt_len, max_len)
    ids = torch.tensor([p + o], device=device)
    labels = torch.tensor([[-100] * len(p) + o], device=device)
    logits = model(input_ids=ids).logits
    return float(token_nll(logits, labels)[0]), n_bytes


def _logits_to_keep_arg(model) -> str | None:
    """The name of the forward argument that restricts the logits to the last positions (transformers:
    ``logits_to_keep``, earlier ``num_logits_to_keep``), or None."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


def _length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Record numbers sorted by length (ties: file order) cut into batches of at most ``batch_size`` records
    whose padded size (records × longest length) stays within ``max_tokens`` (0: no cap; a longer record
    alone still makes a batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:  # ascending: the new record is the batch's longest
        b = batches[-1] if batches else None
        if b is None or len(b) >= batch_size or (max_tokens and (len(b) + 1) * lengths[i] > max_tokens):
            batches.append([i])
        else:
            b.append(i)
    return batches


@torch.no_grad()
def response_bits_bytes(model, tokenizer, records: list[dict], max_prompt_len: int = 256, max_len: int = 1024,
                        batch_size: int = 32, max_tokens: int = 32768) -> dict:
    """Per prompt (first reference), in the order of ``records``: ``{"bits": [NLL / ln 2 of the response
    tokens + EOS], "bytes": [UTF-8 bytes scored]}``. The set's bits per byte is Σ bits / Σ bytes
    (``bpb_of``); ``dwakd.stats`` resamples prompts and recomputes that ratio.

    The tokens and bytes are ``response_nll_bytes``' (same cuts); the records are sorted by length and
    right-padded into batches of ``batch_size`` (at most ``max_tokens`` padded positions each, which bounds
    the logits' memory), one forward pass per batch with an attention mask, so the padding does not change a
    record's numbers (a causal model: real positions see no later position). Where the model's forward takes
    ``logits_to_keep``, logits are computed from the batch's first scored position on only (the prompts are
    most of S-NI's tokens); the cross-entropy covers each record's scored positions only."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    keep_arg = _logits_to_keep_arg(model)
    enc = [_scored_tokens(tokenizer, r["prompt"], r["output"][0], max_prompt_len, max_len) for r in records]
    lengths = [len(p) + len(o) for p, o, _ in enc]
    first = [max(len(p), 1) for p, _, _ in enc]  # each record's first scored position (position 0 has no logit)
    bits = [0.0] * len(records)
    for batch in _length_batches(lengths, max(1, batch_size), max_tokens):
        L = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for b, i in enumerate(batch):  # right padding
            p, o, _ = enc[i]
            ids[b, :lengths[i]] = torch.tensor(p + o)
            mask[b, :lengths[i]] = 1
        start = min(first[i] for i in batch) - 1  # the first position whose logits are needed
        kw = {keep_arg: L - start} if keep_arg and start > 0 else {}
        ids = ids.to(device)
        logits = model(input_ids=ids, attention_mask=mask.to(device), **kw).logits
        if logits.shape[1] != L - start:  # all positions (no logits_to_keep, or a forward that ignores it)
            start = 0
        for b, i in enumerate(batch):  # row by row: the fp32 copy of the logits stays one record's
            q, n = first[i], lengths[i]  # positions q..n-1 are scored, each from the logits one before
            nll = F.cross_entropy(logits[b, q - 1 - start:n - 1 - start].float(), ids[b, q:n], reduction="sum")
            bits[i] = float(nll) / math.log(2)
        del logits
    model.train(was_training)
    return {"bits": bits, "bytes": [b for _, _, b in enc]}


def bpb_of(samples: dict) -> float:
    """Corpus-level bits per byte of ``response_bits_bytes``' output: Σ bits / Σ bytes."""
    return math.fsum(samples["bits"]) / max(sum(samples["bytes"]), 1)


def bits_per_byte(model, tokenizer, records: list[dict], max_prompt_len: int = 256) -> float:
    """Corpus-level response bits per byte (first reference): Σ NLL / (ln 2 · Σ bytes) (the dev score of
    ``train.make_dev_scorer`` sums the same way)."""
    was_training = model.training
    model.eval()
    nats, nbytes = 0.0, 0
    for r in records:
        n, b = response_nll_bytes(model, tokenizer, r["prompt"], r["output"][0], max_prompt_len)
        nats, nbytes = nats + n, nbytes + b
    model.train(was_training)
    return nats / (math.log(2) * max(nbytes, 1))


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _ids(records: list[dict]) -> list:
    return [r.get("id", i) for i, r in enumerate(records)]


def evaluate_model(model, tokenizer, records: list[dict], cfg: GenConfig, with_bpb: bool = True) -> dict:
    """Generations, per-sample ROUGE-L per seed, and the summary for one model on one set: ROUGE-L on the first
    ``cfg.limit`` records (``ids``; 0 = all); with ``with_bpb`` also each prompt's response bits and bytes on
    the first ``cfg.bpb_limit`` records (``bpb_samples``, in the order of ``bpb_ids``; 0 = all) and their
    bpb."""
    bpb_records = records[:cfg.bpb_limit] if cfg.bpb_limit else records
    records = records[:cfg.limit] if cfg.limit else records
    prompts = [r["prompt"] for r in records]
    per_seed = {}
    for seed in cfg.seeds:
        preds = generate(model, tokenizer, prompts, cfg, seed)
        scores = [rouge_l(p, r["output"]) for p, r in zip(preds, records)]
        per_seed[str(seed)] = {"rougeL": statistics.fmean(scores), "scores": scores, "generations": preds}
    result = {
        "ids": _ids(records),
        "seeds": per_seed,
        "summary": {"rougeL": summarise([v["rougeL"] for v in per_seed.values()])},
    }
    if with_bpb:  # per prompt too (``bpb_samples``): the significance table's paired bootstrap of bpb
        result["bpb_ids"] = _ids(bpb_records)
        result["bpb_samples"] = response_bits_bytes(model, tokenizer, bpb_records, cfg.max_prompt_len,
                                                    batch_size=cfg.batch_size)
        result["summary"]["bpb"] = bpb_of(result["bpb_samples"])
    return result


def evaluate_copy(records: list[dict], limit: int = 0) -> dict:
    """The "copy the instruction and input" floor (deterministic: one pseudo-seed, std 0) on the first ``limit``
    records (0 = all): the records ``evaluate_model`` samples for ROUGE-L."""
    records = records[:limit] if limit else records
    preds = [copy_baseline(r["prompt"]) for r in records]
    scores = [rouge_l(p, r["output"]) for p, r in zip(preds, records)]
    return {"ids": _ids(records),
            "seeds": {"copy": {"rougeL": statistics.fmean(scores), "scores": scores, "generations": preds}},
            "summary": {"rougeL": summarise([statistics.fmean(scores)]), "bpb": None}}
