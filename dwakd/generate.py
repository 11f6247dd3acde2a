"""Teacher generations for sequence-level KD (SeqKD; Kim & Rush, EMNLP 2016, as used by MiniLLM and DSKD).

docs/methods.md "SeqKD": sample the teacher's response for every training prompt (temperature 1.0, top-k 0,
top-p 1.0, prompt ≤ 256 tokens, prompt + response ≤ 512 tokens, seed 10), replace the gold ``output`` with
it, and train the student with plain CE (``baselines/seqkd.py``). Only text crosses from the teacher to the
student, so the method does not care about the two vocabularies. No ``no_repeat_ngram_size`` constraint:
that belongs to the evaluation protocol, not to SeqKD's sampling.

The sampling itself is ``dwakd.evaluate.generate`` (left padding, length-sorted batches, KV cache). This
module adds what a long job needs:

* **chunks**: the records are cut, in file order, into chunks of ``chunk_size`` prompts; chunk k is sampled
  by one ``generate`` call seeded with ``seed + k``. The output is therefore a function of the settings
  only, never of where a run was stopped (with ``chunk_size ≥ len(records)`` it is exactly
  ``generate(..., seed=seed)``).
* **resume**: each finished chunk is appended to ``<out>.partial`` (one JSON line per chunk, flushed and
  fsynced) after a header line holding a fingerprint of the teacher's files, the records and the settings.
  A new run keeps the complete chunks of a partial file whose fingerprint matches (a torn last line is
  dropped) and samples the rest; a partial file of other settings is discarded.
* **atomic output**: the final JSONL is written to a temporary file and renamed; the partial file is then
  removed.

Empty generations (the teacher sampled EOS first; decoded text is empty after ``strip``): ``empty: gold``
(default) keeps the gold response for that prompt, ``empty: drop`` leaves the prompt out. An empty target
would teach the student to stop at once, and the data loader rejects empty outputs. Every record says where
its ``output`` came from in ``source`` (``teacher`` or ``gold``); ``dwakd train`` checks that field for
methods that must train on teacher generations.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from dwakd.atomic import atomic_write_text
from dwakd.errors import ConfigError
from dwakd.sampling import SamplingConfig

EMPTY_POLICIES = ("gold", "drop")
SOURCES = ("teacher", "gold")


@dataclass
class TeacherGenConfig(SamplingConfig):
    """Settings of ``dwakd generate`` (``profiles.<p>.generate`` in config/config.yaml): the sampling
    (``SamplingConfig``: pure sampling, T = 1, top-k 0, top-p 1, the prompt's first 256 tokens as in training,
    batches of 32) with SeqKD's own defaults below, the seed, the chunks and the empty-sample policy.

    Defaults are SeqKD's settings in MiniLLM / DSKD (docs/methods.md "SeqKD").
    """

    no_repeat_ngram_size: int = 0  # 0 = off (only the evaluation protocol uses 6)
    max_new_tokens: int = 512  # a further cap on the response length
    seed: int = 10  # MiniLLM / DSKD: seed 10
    max_len: int = 512  # prompt + response ≤ 512 tokens (the longest prompt of a batch counts)
    chunk_size: int = 256  # prompts per resumable chunk (chunk k is sampled with seed + k)
    empty: str = "gold"  # an empty generation: "gold" keeps the gold response, "drop" drops the prompt

    def validate(self, where: str) -> None:
        for k in ("max_prompt_len", "max_new_tokens", "batch_size", "chunk_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.max_len <= self.max_prompt_len:
            raise ConfigError(f"{where}.max_len: expected more than max_prompt_len ({self.max_prompt_len}) so that "
                              f"every prompt leaves room for a response, got {self.max_len}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: expected a value > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p: expected a value in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.no_repeat_ngram_size < 0:
            raise ConfigError(f"{where}: top_k and no_repeat_ngram_size must be ≥ 0")
        if self.empty not in EMPTY_POLICIES:
            raise ConfigError(f"{where}.empty: expected one of {list(EMPTY_POLICIES)}, got {self.empty!r}")

    def gen_config(self):
        """The protocol's ``GenConfig`` that samples with these settings (one seed, ``seed``)."""
        from dwakd.evaluate import GenConfig

        sampling = {f.name: getattr(self, f.name) for f in fields(SamplingConfig)}
        return GenConfig(**sampling, seeds=[self.seed], max_len=self.max_len)


def fingerprint(model_dir: str | os.PathLike, records: list[dict], cfg: TeacherGenConfig) -> str:
    """sha256 over the teacher folder's files (names and bytes), the prompts and the settings."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(model_dir)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps([r["prompt"] for r in records], ensure_ascii=False).encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    return h.hexdigest()


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _chunk_sizes(n: int, size: int) -> list[int]:
    return [min(size, n - s) for s in range(0, n, size)]


def read_partial(path: Path, header: dict) -> list[list[str]]:
    """The complete chunks of a partial file written for ``header`` (``[]`` if none, or other settings)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        if json.loads(lines[0]) != header:
            return []
    except json.JSONDecodeError:
        return []
    sizes = _chunk_sizes(header["n"], header["chunk_size"])
    chunks: list[list[str]] = []
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line (the run was killed while writing it)
        k = len(chunks)
        if (not isinstance(rec, dict) or rec.get("chunk") != k or k >= len(sizes)
                or not isinstance(rec.get("texts"), list) or len(rec["texts"]) != sizes[k]):
            break
        chunks.append(rec["texts"])
    return chunks


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def build_records(records: list[dict], texts: list[str], empty: str) -> list[dict]:
    """Replace each gold ``output`` with the teacher's text; an empty text follows the ``empty`` policy."""
    out = []
    for r, t in zip(records, texts, strict=True):
        if t.strip():
            out.append({**r, "output": t, "source": "teacher"})
        elif empty == "gold":
            gold = r["output"][0] if isinstance(r["output"], list) else r["output"]
            out.append({**r, "output": gold, "source": "gold"})
        # empty == "drop": left out
    return out


def generate_dataset(model, tokenizer, records: list[dict], cfg: TeacherGenConfig, out: str | os.PathLike,
                     fp: str, log: Callable[[str], None] = print) -> dict:
    """Sample the teacher's response to every record's prompt and write ``out`` (JSONL), resumably.

    ``fp`` identifies the teacher, the records and the settings (``fingerprint``); a partial file written
    under another fingerprint is discarded. Returns counts and the time spent.
    """
    from dwakd.evaluate import generate  # torch: imported only when sampling

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(out)
    n, size = len(records), cfg.chunk_size
    sizes = _chunk_sizes(n, size)
    header = {"fingerprint": fp, "n": n, "chunk_size": size}
    chunks = read_partial(part, header)
    if part.exists() and not chunks:
        log(f"{part}: no complete chunk for these settings; starting again")
    # rewrite the valid prefix (drops a torn line) before appending to it
    _write_atomic(part, "".join(json.dumps(x, ensure_ascii=False) + "\n"
                                for x in [header, *({"chunk": k, "texts": c} for k, c in enumerate(chunks))]))
    if chunks:
        log(f"resuming: {len(chunks)} of {len(sizes)} chunks already sampled ({sum(map(len, chunks))} prompts)")
    gcfg = cfg.gen_config()
    prompts = [r["prompt"] for r in records]
    t0 = time.time()
    with open(part, "a", encoding="utf-8") as fh:
        for k in range(len(chunks), len(sizes)):
            texts = generate(model, tokenizer, prompts[k * size:k * size + sizes[k]], gcfg, seed=cfg.seed + k)
            fh.write(json.dumps({"chunk": k, "texts": texts}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            chunks.append(texts)
            log(f"chunk {k + 1}/{len(sizes)}: {sum(map(len, chunks))}/{n} prompts ({time.time() - t0:.1f}s)")
    texts = [t for c in chunks for t in c]
    result = build_records(records, texts, cfg.empty)
    _write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result))
    part.unlink()
    n_teacher = sum(r["source"] == "teacher" for r in result)
    return {"prompts": n, "records": len(result), "teacher": n_teacher, "gold": len(result) - n_teacher,
            "dropped": n - len(result), "seconds": round(time.time() - t0, 2)}


def check_generated(records: list[dict], where: str) -> None:
    """Fail unless every record comes from ``dwakd generate`` (it carries ``source``)."""
    bad = next((i for i, r in enumerate(records) if r.get("source") not in SOURCES), None)
    if bad is not None:
        raise ConfigError(f"{where}: record {bad + 1} has no 'source' field from `dwakd generate`; this method "
                          f"trains on the teacher's generations: run `dwakd generate` and pass its output with "
                          f"--train-file")
