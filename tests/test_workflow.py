"""The Snakemake workflow: lint, a dry run that never imports torch, the CLI's errors, and (marked slow)
a real run of the tiny profile that produces a table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    """The jobs' `dwakd` commands must import this checkout, whatever `pip install -e` last pointed to."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def snakemake(*args, cwd=ROOT, check=True):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args], cwd=cwd,
                       capture_output=True, text=True, env=_env())
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.mark.parametrize("extra", [[], ["--config", "rebuild_models=true"], ["--config", "profile=tiny"]])
def test_lint_is_clean(extra, tmp_path):
    r = snakemake("--lint", "-d", str(tmp_path), *extra, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_lists_the_dag_without_importing_torch(tmp_path):
    code = (
        "import sys\n"
        "from snakemake.cli import main\n"
        f"try:\n    main(['-s', {str(ROOT / 'Snakefile')!r}, '-d', {str(tmp_path)!r}, '-n', '--cores', '2'])\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH 0", r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "rule train:" in out and "rule eval:" in out and "rule report:" in out


def test_seqkd_trains_on_the_teacher_samples_and_mined_reads_the_vocab_map(tmp_path):
    r = snakemake("-n", "-p", "-d", str(tmp_path), "--cores", "2", "--config", "profile=tiny")
    out = r.stdout + r.stderr
    cmds = [ln.split("Shell command: ", 1)[1] for ln in out.splitlines() if ln.startswith("Shell command: ")]
    train = {c.split("--run ")[1].split()[0]: c for c in cmds if " train " in c and "--pair tiny " in c}
    assert set(train) == {"sft", "seqkd", "uld", "mined", "multilevel_ot", "dskd_cma", "dskd_eta", "cma_ga", "dwakd",
                          "dwakd_w_bdtw", "dskd_cma_on_policy"}
    gen = "results/tiny/teachers/qwen2/generated/teacher_train.jsonl"  # per teacher (named by its arch here)
    vmap = "results/tiny/vocab_maps/qwen2__llama.json"  # per teacher and student tokenizer
    assert f"--train-file {gen}" in train["seqkd"] and "--vocab-map" not in train["seqkd"]
    assert f"--vocab-map {vmap}" in train["mined"] and "--train-file results/tiny/data/train.jsonl" in train["mined"]
    for run in ("sft", "uld", "multilevel_ot", "dskd_cma", "dskd_eta", "cma_ga", "dwakd", "dwakd_w_bdtw",
                "dskd_cma_on_policy"):
        assert "--train-file results/tiny/data/train.jsonl" in train[run] and "--vocab-map" not in train[run]
    # one generate job and one vocab_map job for the pair, shared by every run that needs them
    assert sum(f"--out {gen}" in c for c in cmds) == 1 and sum(f"--out {vmap}" in c for c in cmds) == 1


def test_bad_config_key_fails_the_dry_run_naming_the_key(tmp_path):
    r = snakemake("-n", "-d", str(tmp_path), "--config", "profile=nope", check=False)
    assert r.returncode != 0 and "--config profile=nope: profile: unknown profile 'nope'" in r.stdout + r.stderr
    r = snakemake("-n", "-d", str(tmp_path), "--config", "rebuild_models=perhaps", check=False)
    assert r.returncode != 0 and "rebuild_models" in r.stdout + r.stderr


def test_cli_error_names_the_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dwakd.cli", "train", "--run", "ghost", "--models", "x", "--data", "y",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=_env())
    assert r.returncode == 2
    assert "run 'ghost' is not in runs" in r.stderr


@pytest.mark.slow
def test_tiny_profile_runs_end_to_end(tiny_run):
    """The real tiny run (CI runs it; the session's ``tiny_run``): builds a tiny pair from scratch, trains SFT,
    every baseline and DWA-KD, evaluates, reports."""
    tmp_path = tiny_run
    tables = tmp_path / "results" / "tiny" / "tiny" / "tables"
    md = (tables / "main.md").read_text()
    sections = md.split("## ")[1:]  # ROUGE-L, then bits per byte
    assert len(sections) == 2
    for section in sections:
        rows = [ln.split("|")[1].strip() for ln in section.splitlines() if ln.startswith("| ")]
        for row in ("Copy instruction+input", "Teacher", "SFT", "SeqKD", "ULD", "MinED", "DSKD-CMA", "DSKD-ETA",
                    "DSKD-CMA-GA", "DWA-KD"):
            assert row in rows, (row, rows)
    ablation = (tables / "ablation.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in ablation.split("## ")[1].splitlines() if ln.startswith("| ")]
    assert rows[1:] == ["DSKD-CMA", "w/ bDTW", "DWA-KD"], rows  # header first; the profile's order, no floor
    results, tiny = tmp_path / "results" / "tiny", tmp_path / "results" / "tiny" / "tiny"
    gen = results / "teachers" / "qwen2" / "generated" / "teacher_train.jsonl"
    assert len(gen.read_text().splitlines()) == 64
    assert f"train_file: {gen.relative_to(tmp_path)}" in (tiny / "runs" / "seqkd" / "resolved_config.yaml").read_text()
    vmap = results / "vocab_maps" / "qwen2__llama.json"
    assert f"vocab_map: {vmap.relative_to(tmp_path)}" in (tiny / "runs" / "mined" / "resolved_config.yaml").read_text()
    for col in ("Dolly", "SelfInst", "VicunaEval", "S-NI", "Avg"):
        assert col in md
    assert (tables / "main.csv").exists() and (tables / "main.tex").exists()
    # the significance, training-cost and loss-curve tables (dwakd significance / efficiency)
    sig = (tables / "significance.csv").read_text()
    assert "teacher,Teacher,sft,SFT,rougeL,avg," in sig and "dwakd,DWA-KD,dskd_cma,DSKD-CMA,rougeL,avg," in sig
    assert "dwakd,DWA-KD,dskd_cma,DSKD-CMA,bpb,avg," in sig  # bits per byte per prompt (bpb_samples) too
    eff = (tables / "efficiency.md").read_text()
    assert all(f"| {m} " in eff for m in ("SFT", "DSKD-CMA", "DWA-KD", "w/ bDTW"))
    # the on-policy table (tiny's default target): DSKD-CMA beside its on-policy run, whose sampling cost the
    # efficiency table shows and whose log says which steps sampled
    on_policy = (tables / "on_policy.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in on_policy.split("## ")[1].splitlines() if ln.startswith("| ")]
    assert rows[1:] == ["DSKD-CMA", "DSKD-CMA (on-policy)"], rows
    assert "generation share of time" in eff and "| DSKD-CMA (on-policy) " in eff
    log = [json.loads(ln) for ln in (tiny / "runs" / "dskd_cma_on_policy" / "train_log.jsonl").read_text().splitlines()]
    assert any(x.get("on_policy") for x in log) and all("gen_s" in x for x in log if "loss" in x)
    assert (tables / "train_curves.csv").read_text().startswith("run,method,step,term,value\n")
    # the same-vocabulary table (DSKD Table 1 layout) on tiny's same-tokenizer twin, which trains its runs only
    sv = results / "tiny-samevocab"
    same = (sv / "tables" / "same_vocab.md").read_text()
    rows = [[c.strip() for c in ln.split("|")[1:3]] for ln in same.split("## ")[1].splitlines() if ln.startswith("| ")]
    assert rows == [["Framework", "Divergence"], ["SFT", "–"], ["Vanilla KD", "KL"], ["", "RKL"], ["DSKD", "KL"],
                    ["", "RKL"], ["Teacher", "–"]], rows
    assert sorted(x.name for x in (sv / "runs").iterdir()) == ["dskd_fkl", "dskd_rkl", "sft", "vanilla_kd_fkl",
                                                              "vanilla_kd_rkl"]
    assert not (sv / "tables" / "main.md").exists()
    assert (sv / "tables" / "same_vocab.csv").exists() and (sv / "tables" / "same_vocab.tex").exists()
    from dwakd.models import load_tokenizer

    assert (load_tokenizer(sv / "models" / "teacher").get_vocab()
            == load_tokenizer(sv / "models" / "student_base").get_vocab())
    run = tiny / "runs" / "sft"
    assert (run / "resolved_config.yaml").exists() and (run / "selection.json").exists()
    ev = json.loads((tiny / "eval" / "sft" / "dolly.json").read_text())
    assert set(ev["seeds"]) == {"10", "20"} and len(ev["seeds"]["10"]["generations"]) == 6
    # a second invocation has nothing to do
    r = snakemake("--cores", "2", "-d", str(tmp_path), "--config", "profile=tiny", "-n")
    assert "Nothing to be done" in r.stdout + r.stderr
    # a new evaluation size reruns the evaluations only: the set files hold whole sets and `eval.limit` is read
    # by `dwakd eval`, so the data, the trained runs and the teacher's samples are reused
    over = tmp_path / "over.yaml"
    over.write_text("profiles: {tiny: {eval: {limit: 5}}}\n")
    r = snakemake("--cores", "2", "-d", str(tmp_path), "--config", "profile=tiny", "--configfile", str(over), "-n")
    out = r.stdout + r.stderr
    assert "rule eval:" in out
    assert "rule data:" not in out and "rule train:" not in out and "rule generate:" not in out
    # the maintainers' rebuild target packs the built pair like dwakd/assets/mini
    snakemake("--cores", "2", "-d", str(tmp_path), "--config", "profile=tiny", "--", "ship")
    shipped = tiny / "build" / "shipped"
    from dwakd.data import verify_checksums

    verify_checksums(shipped)
    assert (shipped / "teacher" / "model.safetensors").exists() and (shipped / "MODEL_CARD.md").exists()


@pytest.mark.slow
def test_snakemake_report_is_one_html_file_with_the_tables_and_figures(tiny_run, tmp_path):
    """`snakemake --report` (no --cores) bundles every captioned table and figure of the run into one HTML."""
    out = tmp_path / "report.html"
    snakemake("-d", str(tiny_run), "--config", "profile=tiny", "--report", str(out))
    html = out.read_text(errors="replace")
    for name in ("main.csv", "ablation.csv", "significance.csv", "efficiency.csv", "train_curves.csv",
                 "same_vocab.csv", "same_vocab.html",
                 "main.html", "ablation.html", "significance.html", "efficiency.html",  # shown in the page
                 "attention_1.png", "alignment_probe.png", "train_curves.png", "rougeL.png"):
        assert name in html, name
    assert "Cross-model attention" in html and "Token-alignment probe" in html  # the captions


def test_mini_default_target_leaves_the_ablation_table_to_its_own_target(tmp_path):
    """mini sets `ablation_in_all: false`: `snakemake` trains the main table's runs only; `snakemake ablation`
    trains the ablation runs and writes tables/ablation.*."""
    def jobs(*target):
        r = snakemake("-n", "-p", "-d", str(tmp_path), "--cores", "2", *target)
        out = r.stdout + r.stderr
        cmds = [ln.split("Shell command: ", 1)[1] for ln in out.splitlines() if ln.startswith("Shell command: ")]
        return {c.split("--run ")[1].split()[0] for c in cmds if " train " in c}, out

    runs, out = jobs()
    assert runs == {"sft", "seqkd", "uld", "mined", "multilevel_ot", "dskd_cma", "dskd_eta", "cma_ga", "dwakd"}
    assert "results/mini/tables/ablation.md" not in out
    runs, out = jobs("ablation")
    assert {"dwakd_w_ew", "dwakd_srkl", "dskd_cma", "dwakd"} <= runs and "results/mini/tables/ablation.md" in out
