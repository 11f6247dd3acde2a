"""Hooks of the dwakd lm-eval tasks (lm-evaluation-harness >= 0.4.13): data loading and ROUGE-L scoring.

The tasks read the evaluation sets dwakd ships (``dwakd/assets/data``) and score with the suite's own
``dwakd.evaluate.rouge_l``, so an lm-eval run measures what ``dwakd eval`` measures:

* ``load_docs`` (the tasks' ``custom_dataset``) returns the set's records, in file order, as a
  ``datasets.DatasetDict`` with one ``test`` split; every doc has ``id`` (``<set>-<index>``, as
  ``dwakd data`` writes it), ``prompt`` (the record's prompt, template already applied), ``output`` (the
  list of references) and ``context`` (the text the model is given: ``prompt`` cut to its first
  ``max_prompt_tokens`` tokens, 256 by default, under the model's own tokenizer, as the suite cuts it).
  lm-eval passes ``--model_args`` and ``--metadata`` to this hook, so the tokenizer is the one named by
  ``tokenizer=`` or ``pretrained=``; without either the prompts are left whole (with a warning).
* ``process_results`` is ``rouge_l(generation, references)``: Google ``rouge_score`` ROUGE-L F1 with
  stemming, max over the references, × 100.

UnNI is not shipped: ``load_docs`` reads the file ``dwakd data --only unni`` writes, named by
``--metadata '{"unni_file": "..."}'`` or the environment variable ``DWAKD_UNNI_FILE``, and fails with a
message that says how to get it when neither is given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dwakd.data import SHIPPED_DATA, load_jsonl, select_unni, verify_checksums
from dwakd.errors import DataError
from dwakd.evaluate import rouge_l

log = logging.getLogger("dwakd.lm_eval_tasks")  # lm-eval imports this file by path

# set name (config/config.yaml `datasets:`) -> shipped file; UnNI: fetched, see _unni_records
SHIPPED_FILES = {
    "dolly": "dolly_test.jsonl.gz",
    "selfinst": "selfinst.jsonl.gz",
    "vicuna": "vicuna.jsonl.gz",
    "sni": "sni.jsonl.gz",
}
UNNI = {"hub": "MiniLLM/uinst", "hub_file": "11_/valid.jsonl", "min_ref_words": 0, "limit": 10_000}
MAX_PROMPT_TOKENS = 256  # dwakd.evaluate.GenConfig.max_prompt_len


def _unni_records(unni_file: str | None) -> list[dict]:
    path = unni_file or os.environ.get("DWAKD_UNNI_FILE")
    if not path:
        raise DataError(
            "dwakd_unni: the UnNI file is missing. UnNI is not shipped with dwakd (it is fetched from the "
            f"Hugging Face dataset {UNNI['hub']}, file {UNNI['hub_file']}). Fetch it once, online, with "
            "`dwakd data --only unni --out DIR` (offline: add --unni-source FILE, a local copy of "
            "uinst/11_/valid.jsonl); the full selection is DIR/cache/unni.jsonl (DIR/unni.jsonl is cut to "
            "the profile's eval limit). Then give it to lm_eval with "
            "--metadata '{\"unni_file\": \"DIR/cache/unni.jsonl\"}' or DWAKD_UNNI_FILE=DIR/cache/unni.jsonl."
        )
    if not Path(path).exists():
        raise DataError(f"dwakd_unni: {path}: file not found (the UnNI file: fetch it with "
                        f"`dwakd data --only unni --out DIR` and use DIR/cache/unni.jsonl)")
    # the fetched file is already selected; selecting again is a no-op there and makes a raw
    # uinst/11_/valid.jsonl usable as it is
    return select_unni(load_jsonl(path), UNNI["min_ref_words"], UNNI["limit"])


def records(dwakd_set: str, unni_file: str | None = None) -> list[dict]:
    """The suite's evaluation records of one set (``output`` a list of references), in file order."""
    if dwakd_set == "unni":
        recs = _unni_records(unni_file)
    elif dwakd_set in SHIPPED_FILES:
        verify_checksums(SHIPPED_DATA)
        recs = load_jsonl(SHIPPED_DATA / SHIPPED_FILES[dwakd_set])
    else:
        raise DataError(f"dwakd lm-eval tasks: unknown set {dwakd_set!r}; known: "
                        f"{', '.join([*SHIPPED_FILES, 'unni'])}")
    return [{"id": f"{dwakd_set}-{i}", "prompt": r["prompt"], "output": list(r["output"])}
            for i, r in enumerate(recs)]


def _load_tokenizer(tokenizer, pretrained, revision=None, trust_remote_code=False):
    name = tokenizer or pretrained
    if name is None:
        return None
    if not isinstance(name, (str, os.PathLike)):  # a tokenizer (or model) object passed in model_args
        return name if callable(name) else None
    from transformers import AutoTokenizer

    kw = {"trust_remote_code": bool(trust_remote_code)}
    if revision:
        kw["revision"] = revision
    return AutoTokenizer.from_pretrained(str(name), **kw)


def truncate_prompt(tokenizer, prompt: str, n: int) -> tuple[str, bool]:
    """``prompt`` cut to a text whose tokens are the first ``n`` tokens of ``prompt`` (no special tokens),
    and whether re-encoding the cut text gives exactly those tokens (it almost always does)."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=bool(tokenizer.is_fast))
    ids = enc["input_ids"]
    if len(ids) <= n:
        return prompt, True
    target = ids[:n]
    candidates = []
    if tokenizer.is_fast:
        candidates.append(prompt[: enc["offset_mapping"][n - 1][1]])
    candidates.append(tokenizer.decode(target, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    for text in candidates:
        if tokenizer(text, add_special_tokens=False)["input_ids"] == target:
            return text, True
    return candidates[0], False


def load_docs(dwakd_set: str, max_prompt_tokens: int = MAX_PROMPT_TOKENS, unni_file: str | None = None,
              tokenizer=None, pretrained=None, revision=None, trust_remote_code=False, add_bos_token=None,
              **_other_metadata):
    """``custom_dataset`` of every dwakd task: lm-eval calls it with the task's ``dataset_kwargs``
    (``dwakd_set``) and its metadata (``--model_args`` merged with ``--metadata``)."""
    import datasets

    docs = records(dwakd_set, unni_file)
    tok = None
    if max_prompt_tokens and int(max_prompt_tokens) > 0:
        tok = _load_tokenizer(tokenizer, pretrained, revision, trust_remote_code)
        if tok is None:
            log.warning("dwakd_%s: no tokenizer in model_args (pretrained= or tokenizer=): prompts are not cut "
                        "to their first %s tokens as the suite cuts them", dwakd_set, max_prompt_tokens)
    inexact = 0
    for d in docs:
        d["context"] = d["prompt"]
        if tok is not None:
            d["context"], exact = truncate_prompt(tok, d["prompt"], int(max_prompt_tokens))
            inexact += not exact
    if inexact:
        log.warning("dwakd_%s: %d prompts cut to %s tokens do not re-encode to exactly those tokens",
                    dwakd_set, inexact, max_prompt_tokens)
    if tok is not None and add_bos_token is not False and str(add_bos_token).lower() != "false":
        probe = "Below is an instruction"
        if tok(probe)["input_ids"] != tok(probe, add_special_tokens=False)["input_ids"]:
            log.warning("dwakd_%s: this tokenizer adds special tokens (BOS) to a prompt and the suite does not: "
                        "pass add_bos_token=False in --model_args to match it", dwakd_set)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F1 × 100 of the generation against the best of the doc's references (``dwakd.evaluate.rouge_l``)."""
    return {"rougeL": rouge_l(results[0], list(doc["output"]))}
