"""The lm-eval tasks (dwakd/lm_eval_tasks) load through lm-eval's own TaskManager, give the suite's docs,
prompts and ROUGE-L, and run end to end on the shipped mini student (no downloads)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import yaml
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

import dwakd.lm_eval_tasks as T
from dwakd.data import ASSETS, SHIPPED_DATA, load_jsonl, select_unni
from dwakd.errors import DataError
from dwakd.evaluate import GenConfig, evaluate_model, generate, rouge_l
from dwakd.lm_eval_tasks.utils import SHIPPED_FILES, UNNI
from dwakd.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
STUDENT = str(ASSETS / "mini" / "student")
SETS = {"dolly": 500, "selfinst": 242, "vicuna": 80, "sni": 1694}  # PROVENANCE.md
MODEL_ARGS = {"pretrained": STUDENT, "dtype": "float32", "add_bos_token": False}


def _manager(**metadata) -> TaskManager:
    return TaskManager(include_path=T.PATH, include_defaults=False, metadata=metadata)


@pytest.fixture(scope="module")
def whole_prompt_tasks() -> dict:
    """The four shipped tasks (group ``dwakd``), prompts left whole (no tokenizer)."""
    return _manager(max_prompt_tokens=0).load(["dwakd"])["tasks"]


def test_tasks_and_groups_are_found():
    names = set(_manager().all_tasks)
    assert {*T.TASKS, "dwakd", "dwakd_all"} <= names
    assert set(T.TASKS) == {f"dwakd_{s}" for s in [*SETS, "unni"]}


def test_files_and_unni_spec_match_the_config():
    ds = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["datasets"]
    assert SHIPPED_FILES == {s: ds[s]["file"] for s in SETS}
    assert UNNI == {k: ds["unni"][k] for k in ("min_ref_words", "limit")} | {"hub": ds["unni"]["hub"],
                                                                             "hub_file": ds["unni"]["hub_file"]}


def test_generation_kwargs_are_the_protocol(whole_prompt_tasks):
    g = GenConfig()
    want = {"until": [], "do_sample": True, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
            "no_repeat_ngram_size": g.no_repeat_ngram_size, "max_gen_toks": g.max_new_tokens}
    for task in whole_prompt_tasks.values():
        assert task.config.generation_kwargs == want
        assert task.config.num_fewshot == 0 and task.OUTPUT_TYPE == "generate_until"


@pytest.mark.parametrize("name", list(SETS))
def test_docs_and_prompts_are_the_suites(whole_prompt_tasks, name):
    """Every doc of every set, in order; the request context lm-eval builds is the record's prompt."""
    task = whole_prompt_tasks[f"dwakd_{name}"]
    recs = load_jsonl(SHIPPED_DATA / SHIPPED_FILES[name])
    assert len(task.eval_docs) == len(recs) == SETS[name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    assert len(task.instances) == len(recs)
    by_doc = {inst.doc_id: inst for inst in task.instances}
    for i, (doc, rec) in enumerate(zip(task.eval_docs, recs)):
        assert doc["id"] == f"{name}-{i}" and doc["prompt"] == rec["prompt"] and doc["output"] == rec["output"]
        assert task.doc_to_text(doc) == rec["prompt"]
        assert by_doc[i].arguments[0] == rec["prompt"]


def test_prompts_are_cut_to_their_first_256_tokens_like_the_suite():
    """With the model's tokenizer (model_args pretrained=), the context is the prompt's first 256 tokens."""
    task = _manager(**MODEL_ARGS).load(["dwakd_dolly"])["tasks"]["dwakd_dolly"]
    tok = load_tokenizer(STUDENT)
    cut = 0
    for doc in task.eval_docs:
        full = tok(doc["prompt"], add_special_tokens=False)["input_ids"]
        ctx = tok(doc["context"], add_special_tokens=False)["input_ids"]
        assert ctx == full[:GenConfig().max_prompt_len]
        cut += len(full) > GenConfig().max_prompt_len
    assert cut > 10  # 34 Dolly prompts are longer than 256 tokens of the mini student


def test_process_results_is_the_suites_rouge_l(whole_prompt_tasks):
    """Hand-made generations on real records: empty, exact, partial, copy, and S-NI's multiple references."""
    dolly, sni = whole_prompt_tasks["dwakd_dolly"], whole_prompt_tasks["dwakd_sni"]
    multi = next(d for d in sni.eval_docs if len(d["output"]) >= 3)
    cases = [
        (dolly, dolly.eval_docs[0], ""),
        (dolly, dolly.eval_docs[0], dolly.eval_docs[0]["output"][0]),
        (dolly, dolly.eval_docs[1], " ".join(dolly.eval_docs[1]["output"][0].split()[:5]) + " and more words"),
        (dolly, dolly.eval_docs[2], dolly.eval_docs[2]["prompt"]),
        (sni, multi, multi["output"][1]),
        (sni, multi, multi["output"][0] + " " + multi["output"][2]),
        (sni, multi, "The Cats were RUNNING quickly."),
    ]
    scores = []
    for task, doc, pred in cases:
        got = task.process_results(doc, [pred])
        assert set(got) == {"rougeL"}
        assert got["rougeL"] == rouge_l(pred, doc["output"])
        scores.append(got["rougeL"])
    assert scores[0] == 0.0 and scores[1] == pytest.approx(100.0) and scores[4] == pytest.approx(100.0)
    assert 0.0 < scores[2] < 100.0
    # max over the references, not the first one
    assert scores[4] > rouge_l(multi["output"][1], multi["output"][:1])
    assert dolly.aggregation()["rougeL"](scores) == pytest.approx(statistics.fmean(scores))


def test_suite_generations_scored_by_the_task_equal_the_suites_scores(whole_prompt_tasks):
    task = whole_prompt_tasks["dwakd_sni"]
    docs = [task.eval_docs[i] for i in range(4)]
    model, tok = load_model(STUDENT), load_tokenizer(STUDENT)
    cfg = GenConfig(seeds=[10], max_new_tokens=16, batch_size=4)
    res = evaluate_model(model, tok, [{"prompt": d["prompt"], "output": d["output"]} for d in docs], cfg,
                         with_bpb=False)["seeds"]["10"]
    assert [task.process_results(d, [g])["rougeL"] for d, g in zip(docs, res["generations"])] == res["scores"]


def test_unni_without_its_file_says_how_to_get_it(monkeypatch):
    monkeypatch.delenv("DWAKD_UNNI_FILE", raising=False)
    with pytest.raises(DataError, match=r"dwakd data --only unni.*unni_file.*DWAKD_UNNI_FILE"):
        _manager().load(["dwakd_unni"])
    with pytest.raises(DataError, match="nowhere.jsonl: file not found"):
        _manager(unni_file="/nowhere.jsonl").load(["dwakd_unni"])


def test_unni_reads_the_fetched_file_with_the_suites_selection(tmp_path, monkeypatch):
    raw = [{"prompt": f"### Instruction:\nSay {i}\n\n### Response:\n",
            "output": " ".join(["word"] * (5 if i % 3 == 0 else 12))} for i in range(12)]
    path = tmp_path / "valid.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    want = select_unni(load_jsonl(path), UNNI["min_ref_words"], UNNI["limit"])
    assert [r["prompt"] for r in want] == [r["prompt"] for r in raw]  # 11_ is used as published (no re-filter)
    monkeypatch.setenv("DWAKD_UNNI_FILE", str(path))
    task = _manager(max_prompt_tokens=0).load(["dwakd_unni"])["tasks"]["dwakd_unni"]
    assert [d["prompt"] for d in task.eval_docs] == [r["prompt"] for r in want]


def test_simple_evaluate_end_to_end_limit_2():
    """lm-eval's own run (model by name and model_args, as the CLI does) on the shipped student."""
    out = simple_evaluate(model="hf", model_args=MODEL_ARGS, tasks=["dwakd_vicuna"],
                          task_manager=_manager(**MODEL_ARGS),
                          limit=2, device="cpu", batch_size=2, gen_kwargs="max_gen_toks=32", random_seed=10,
                          numpy_random_seed=10, torch_random_seed=10, fewshot_random_seed=10, bootstrap_iters=0,
                          log_samples=True)
    res = out["results"]["dwakd_vicuna"]
    assert 0.0 <= res["rougeL,none"] <= 100.0
    samples = out["samples"]["dwakd_vicuna"]
    assert len(samples) == 2
    per_sample = [rouge_l(s["filtered_resps"][0], s["doc"]["output"]) for s in samples]
    assert [s["rougeL"] for s in samples] == per_sample
    assert res["rougeL,none"] == pytest.approx(statistics.fmean(per_sample))


def test_lm_eval_generation_is_the_suites_for_the_same_seed():
    """One prompt longer than 256 tokens, batch size 1: lm-eval (cut prompt, sampling settings, seed) gives
    exactly the text ``dwakd.evaluate.generate`` gives (64 new tokens on both sides, to keep the test short)."""
    from lm_eval.models.huggingface import HFLM

    tm = _manager(**MODEL_ARGS)
    task = tm.load(["dwakd_dolly"])["tasks"]["dwakd_dolly"]
    tok = load_tokenizer(STUDENT)
    idx = next(i for i, d in enumerate(task.eval_docs)
               if len(tok(d["prompt"], add_special_tokens=False)["input_ids"]) > GenConfig().max_prompt_len)
    lm = HFLM(batch_size=1, device="cpu", **MODEL_ARGS)
    out = simple_evaluate(model=lm, tasks=["dwakd_dolly"], task_manager=tm, samples={"dwakd_dolly": [idx]},
                          gen_kwargs="max_gen_toks=64", random_seed=20, numpy_random_seed=20,
                          torch_random_seed=20, fewshot_random_seed=20,
                          bootstrap_iters=0, log_samples=True)
    (sample,) = out["samples"]["dwakd_dolly"]
    cfg = dataclasses.replace(GenConfig(), batch_size=1, max_new_tokens=64)
    ours = generate(lm.model, tok, [sample["doc"]["prompt"]], cfg, 20)[0]
    assert sample["filtered_resps"][0].strip() == ours
    assert ours  # a real generation, not an empty string on both sides
    assert sample["rougeL"] == rouge_l(ours, sample["doc"]["output"])
