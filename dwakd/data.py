"""Benchmark data: validated loading of the shipped JSONL sets, UnNI fetching, tokenisation and batching.

Records follow the MiniLLM / DSKD format: ``prompt`` (Alpaca template already applied) and ``output``
(a string, or a non-empty list of reference strings for S-NI / UnNI). Every loader here validates every
record and fails with the file, the line number and the field. The training loop's data are here too: records
encoded into items (``encode_records``, ``pack_blocks``), an epoch's sample order (``epoch_order``) and batches
(``collate``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from dwakd.atomic import atomic_file
from dwakd.errors import DataError
from dwakd.files import iter_jsonl_lines, regenerate_hint, sha256_file  # noqa: F401 (sha256_file: re-exported)

ASSETS = Path(str(resources.files("dwakd") / "assets"))
SHIPPED_DATA = ASSETS / "data"


def validate_record(rec: object, where: str) -> dict:
    """Check one record; return it with ``output`` normalised to a list of references.

    ``where`` is ``"file:line"`` and starts every error message.
    """
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "prompt" not in rec:
        raise DataError(f"{where}: field 'prompt' is missing")
    if not isinstance(rec["prompt"], str):
        raise DataError(f"{where}: field 'prompt' must be a string, got {type(rec['prompt']).__name__}")
    if not rec["prompt"].strip():
        raise DataError(f"{where}: field 'prompt' is empty")
    if "output" not in rec:
        raise DataError(f"{where}: field 'output' is missing")
    out = rec["output"]
    if isinstance(out, str):
        refs = [out]
    elif isinstance(out, list):
        if not out:
            raise DataError(f"{where}: field 'output' is an empty list; expected at least one reference")
        for k, r in enumerate(out):
            if not isinstance(r, str):
                raise DataError(f"{where}: field 'output[{k}]' must be a string, got {type(r).__name__}")
        refs = list(out)
    else:
        raise DataError(
            f"{where}: field 'output' must be a string or a list of strings, got {type(out).__name__}"
        )
    if not any(r.strip() for r in refs):
        raise DataError(f"{where}: field 'output' is empty")
    return {**rec, "output": refs}


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read and validate a ``.jsonl`` or ``.jsonl.gz`` file; ``output`` becomes a list of references."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    records = []
    for lineno, line in iter_jsonl_lines(path):  # a non-UTF-8 byte or a truncated .gz: DataError file:line
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg}, column {e.colno}); {regenerate_hint(path)}"
                            ) from None
        records.append(validate_record(rec, where))
    if not records:
        raise DataError(f"{path}: no records; {regenerate_hint(path)}")
    return records


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> None:
    """Write records atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, fsync=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def verify_checksums(directory: Path, sums_file: str = "SHA256SUMS") -> None:
    """Check every file listed in ``directory/SHA256SUMS`` (``sha256sum`` format)."""
    sums = directory / sums_file
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        f = directory / name
        if not f.exists():
            raise DataError(f"{f}: listed in {sums} but missing; {regenerate_hint(f)}")
        got = sha256_file(f)
        if got != digest:
            raise DataError(f"{f}: sha256 {got} does not match {digest} in {sums}; {regenerate_hint(f)}")


_PROMPT_PARTS = re.compile(
    r"### Instruction:\n(?P<instruction>.*?)\n\n(?:### Input:\n(?P<input>.*?)\n\n)?### Response:", re.S
)


def copy_baseline(prompt: str) -> str:
    """The trivial "copy the instruction and input" answer read from an Alpaca-template prompt."""
    m = _PROMPT_PARTS.search(prompt)
    if m is None:
        return prompt
    return " ".join(p for p in (m.group("instruction"), m.group("input")) if p)


# --------------------------------------------------------------------------------------- UnNI


def _ref_words(refs: list[str]) -> int:
    return min(len(r.split()) for r in refs)


def select_unni(records: list[dict], min_ref_words: int = 0, limit: int = 10_000) -> list[dict]:
    """UnNI evaluation subset: the first ``limit`` records of MiniLLM ``uinst/11_`` (already MiniLLM's selection of
    references with >= 11 words, counted its way); ``min_ref_words`` > 0 also drops records with a reference of fewer
    whitespace words (off by default: see docs/deviations.md)."""
    return [r for r in records if _ref_words(r["output"]) >= min_ref_words][:limit]


def fetch_unni(out: Path, *, repo_id: str, filename: str, revision: str, min_ref_words: int, limit: int,
               cache_dir: Path, source: str | None = None) -> Path:
    """Fetch UnNI from the Hugging Face hub (or ``source``, a local file), select, write and checksum it.

    The selected file is cached at ``cache_dir/unni.jsonl`` with a ``.sha256`` beside it; a later call
    verifies the cache instead of downloading again. Without a network the error says what to do.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / "unni.jsonl"
    digest_file = cache_dir / "unni.jsonl.sha256"
    if cached.exists() and digest_file.exists():
        if sha256_file(cached) != digest_file.read_text().split()[0]:
            raise DataError(f"{cached}: checksum does not match {digest_file}; delete both to fetch again")
    else:
        if source is None:
            try:
                from huggingface_hub import hf_hub_download

                source = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                         repo_type="dataset")
            except Exception as e:  # network errors come in many classes
                raise DataError(
                    f"UnNI: could not download {repo_id}/{filename}@{revision} from the Hugging Face hub "
                    f"({type(e).__name__}: {e}). UnNI needs a network once; or pass a local copy of "
                    f"uinst/11_/valid.jsonl with `dwakd data --unni-source FILE`, or remove 'unni' from "
                    f"the profile's eval_sets."
                ) from None
        records = select_unni(load_jsonl(source), min_ref_words, limit)
        write_jsonl(records, cached)
        digest_file.write_text(f"{sha256_file(cached)}  unni.jsonl\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(load_jsonl(cached), out)
    return out


# ------------------------------------------------------------------------------------ prepare


def prepare_set(name: str, spec: dict, out: Path, limit: int | None, data_dir: Path = SHIPPED_DATA) -> int:
    """Validate one shipped set, keep its first ``limit`` records, write ``out`` with ids. Returns the count."""
    records = load_jsonl(data_dir / spec["file"])
    if limit is not None:
        records = records[:limit]
    write_jsonl(({"id": f"{name}-{i}", "prompt": r["prompt"], "output": r["output"]}
                 for i, r in enumerate(records)), out)
    return len(records)


# --------------------------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Encoded:
    """One sample tokenised for causal-LM training: ``labels`` are -100 on the prompt."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int


def encode_sample(tokenizer, prompt: str, output: str, max_prompt_len: int, max_len: int) -> Encoded:
    """MiniLLM / DSKD tokenisation: prompt without special tokens truncated to ``max_prompt_len``;
    output + EOS; concatenated and truncated to ``max_len``; labels -100 on the prompt."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_prompt_len]
    o = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + o)[:max_len]
    labels = ([-100] * len(p) + o)[:max_len]
    return Encoded(ids, labels, len(p))


def encode_records(records: list[dict], tokenizer, max_prompt_len: int, max_len: int,
                   train_on_prompt: bool = False) -> list[dict]:
    """Tokenise every record with ``encode_sample`` (its first reference as the target): ``{"index": record
    number, "input_ids", "labels"}``; ``train_on_prompt`` (pre-training) puts labels on every token."""
    out = []
    for i, r in enumerate(records):
        e = encode_sample(tokenizer, r["prompt"], r["output"][0], max_prompt_len, max_len)
        labels = e.input_ids if train_on_prompt else e.labels
        out.append({"index": i, "input_ids": e.input_ids, "labels": list(labels)})
    return out


def response_length(item: dict) -> int:
    """The tokens of an encoded item its loss is summed over (the labels after the first position that are not
    -100): what ``collate``'s ``labels[:, 1:] != -100`` counts for it in any batch."""
    return sum(1 for t in item["labels"][1:] if t != -100)


# ---------------------------------------------------------------------------------------- batching
# (torch is imported inside the functions: the CLI imports this module, and its start stays torch-free)


def pack_blocks(encoded: list[dict], block: int) -> list[dict]:
    """Concatenate samples into full blocks of ``block`` tokens (pre-training); the tail is dropped."""
    ids = [t for e in encoded for t in e["input_ids"]]
    labels = [t for e in encoded for t in e["labels"]]
    return [{"index": k, "input_ids": ids[s:s + block], "labels": labels[s:s + block]}
            for k, s in enumerate(range(0, len(ids) - block + 1, block))]


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest item: input_ids / labels (-100) / attention_mask, each a [B, L] long tensor."""
    import torch

    L = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    labels = torch.full((len(items), L), -100, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for b, x in enumerate(items):
        n = len(x["input_ids"])
        ids[b, :n] = torch.tensor(x["input_ids"])
        labels[b, :n] = torch.tensor(x["labels"])
        mask[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, batch: int = 1,
                window: int = 50) -> list[int]:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same.

    With ``lengths`` (``group_by_length``), consecutive runs of ``batch`` samples (one optimiser step) have
    similar lengths, as in Hugging Face's ``LengthGroupedSampler``: a random permutation is cut into windows
    of ``window × batch`` samples, each window is sorted by length, cut into batches, and the order of the
    batches is shuffled. Every sample is still seen once per epoch; only which samples share a batch
    changes, and with it the padding (the mini profile's 720 samples, batches of 16: 2.41× the real tokens
    in random batches, 1.03× grouped; docs/experiments.md E6)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    size = max(1, window * batch)
    grouped = [sorted(order[i:i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    batches = [w[i:i + batch] for w in grouped for i in range(0, len(w), batch)]
    # a short last batch stays last: the trainer cuts the order at multiples of ``batch``
    full = len(batches) - (len(batches[-1]) < batch if batches else 0)
    return [k for j in torch.randperm(full, generator=g).tolist() for k in batches[j]] + \
        [k for b in batches[full:] for k in b]
