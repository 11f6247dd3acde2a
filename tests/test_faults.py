"""Nothing lost, every fault named (issue 17): each fault below, made as a user would meet it, gives one line that
names the file (and line) or the key and what to do, and no earlier good result is lost.

``FAULTS``: fault -> the line expected (a regular expression). The cases that need a trained model, a workflow
or a second process follow the table.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dwakd import config as C
from dwakd.errors import ConfigError, DataError
from dwakd.files import (CHECKSUMS, RECEIPT, DamagedModelError, publish_run, quick_check, read_json,
                         regenerate_hint, staging_dir, verify_model_dir, write_checksums)
from test_config_errors import _with  # config/config.yaml with dotted keys changed

ROOT = Path(__file__).resolve().parent.parent
REDO = r"regenerate it: snakemake --cores all -f {path} \(with this run's --config / --configfile\)"
RECORD = {"prompt": "### Instruction:\nSay hi.\n\n### Response:", "output": "hi"}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


# ------------------------------------------------------------------------------ the faults of data and result files


def non_utf8_jsonl(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "dolly.jsonl"
    lines = [json.dumps(RECORD).encode()] * 2 + [json.dumps(RECORD).encode().replace(b"hi", b"h\xffi")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    from dwakd.data import load_jsonl

    return path, lambda: load_jsonl(path)


def truncated_jsonl_gz(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "train.jsonl.gz"
    data = gzip.compress(("\n".join(json.dumps({**RECORD, "output": f"answer {k} " * 20}) for k in range(200))
                          + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    from dwakd.data import load_jsonl

    return path, lambda: load_jsonl(path)


def malformed_jsonl(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "dev.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD)[:20] + "\n")
    from dwakd.data import load_jsonl

    return path, lambda: load_jsonl(path)


def truncated_eval_result(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "eval" / "copy" / "dolly.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"summary": {}, "seeds": {}, "ids": ["a"], "predictions": ["x" * 100]})[:60])
    from dwakd.report import load_results

    return path, lambda: load_results(tmp / "eval", ["copy"], ["dolly"])


def non_utf8_train_log(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "runs" / "sft" / "train_log.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \xfe}\n')
    from dwakd.efficiency import read_train_log

    return path, lambda: read_train_log(path)


def truncated_train_log(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "runs" / "sft" / "train_log.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"step": 1, "loss": 1.0, "step_time_s": 1, "tokens_per_s": 1, "peak_mem_mb": 1}\n{"step": 2, "lo')
    from dwakd.efficiency import read_train_log

    return path, lambda: read_train_log(path)


def truncated_vocab_map(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "vocab_maps" / "teacher_to_student.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"fingerprint": "abc", "teacher_to_student": [1, 2, 3')
    from dwakd.vocab_map import read_vocab_map

    return path, lambda: read_vocab_map(path, None, None)


def malformed_table_csv(tmp: Path) -> tuple[Path, callable]:
    path = tmp / "tables" / "main.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"run,method,set\nsft,\xff\xfe,\"dolly\n")
    from dwakd.figures import read_table

    return path, lambda: read_table(path)


# (id, how the fault is made -> (the file, the reader), the line expected; {path}: the file)
FAULTS = [
    ("non-utf8 byte in a data .jsonl", non_utf8_jsonl,
     r"{path}:3: not UTF-8 text \(byte 0xff at byte \d+ of the line\); " + REDO),
    ("truncated .jsonl.gz", truncated_jsonl_gz,
     r"{path}:\d+: truncated or corrupt compressed file \(EOFError: Compressed file ended before the "
     r"end-of-stream marker was reached\) after \d+ complete line\(s\); " + REDO),
    ("torn last line of a data .jsonl", malformed_jsonl,
     r"{path}:2: malformed JSON \(Invalid control character at, column \d+\); " + REDO),
    ("truncated result JSON read by dwakd report", truncated_eval_result,
     r"{path}:1:\d+: truncated evaluation result: Unterminated string starting at: line 1 column \d+ \(char \d+\); "
     + REDO),
    ("non-utf8 byte in train_log.jsonl", non_utf8_train_log,
     r"{path}:2: not UTF-8 text \(byte 0xfe at byte \d+ of the line\); the log is written by the run's training: "
     r"retrain it \(snakemake --cores all -f {dir}/model\.sha256\)"),
    ("truncated train_log.jsonl", truncated_train_log,
     r"{path}:2: not a JSON line: Unterminated string starting at: line 1 column \d+ \(char \d+\); the log is "
     r"written by the "
     r"run's training: retrain it \(snakemake --cores all -f {dir}/model\.sha256\)"),
    ("truncated vocabulary map", truncated_vocab_map,
     r"{path}:1:\d+: truncated vocabulary map: Expecting ',' delimiter: line 1 column \d+ \(char \d+\); " + REDO),
    ("malformed table CSV read by dwakd figures", malformed_table_csv,
     r"{path}: unreadable table \(\w+: .*\); " + REDO),
]


@pytest.mark.parametrize("make, line", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_damaged_file_is_one_line_naming_it_and_how_to_regenerate_it(make, line, tmp_path):
    path, read = make(tmp_path)
    with pytest.raises(DataError) as e:
        read()
    msg = str(e.value)
    assert "\n" not in msg
    want = line.format(path=re.escape(str(path)), dir=re.escape(str(path.parent)))
    assert re.fullmatch(want, msg), msg


def test_a_damaged_shipped_file_is_restored_from_the_repository():
    from dwakd.data import SHIPPED_DATA

    assert regenerate_hint(SHIPPED_DATA / "dolly_train.jsonl.gz") == (
        "restore the shipped file: git checkout -- dwakd/assets/data/dolly_train.jsonl.gz (or reinstall the package)")


def test_dwakd_report_prints_the_line_and_exits_2(tmp_path, capsys):
    """What the report job's log shows for a truncated result (the CLI's one line, no traceback)."""
    from dwakd.cli import main

    path, _ = truncated_eval_result(tmp_path)
    rc = main(["report", "--eval-dir", str(tmp_path / "eval"), "--out", str(tmp_path / "tables")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"dwakd report: error: {re.escape(str(path))}:1:\d+: truncated evaluation result: .*", err)


def test_read_json_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'x.json'))}: missing JSON file; regenerate"):
        read_json(tmp_path / "x.json")


# ---------------------------------------------------------------------------------------------- model folders


@pytest.fixture()
def saved_model(tiny_pair, tmp_path) -> Path:
    """A copy of the tiny student saved with its checksums, as ``dwakd train`` leaves a run's model."""
    folder = tmp_path / "runs" / "sft" / "model"
    shutil.copytree(tiny_pair / "student_base", folder)
    write_checksums(folder, "snakemake --cores all -f results/runs/sft/model.sha256")
    return folder


def _truncate(f: Path) -> None:
    os.truncate(f, f.stat().st_size // 2)


def _flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))


_REDO = r"the model folder is damaged; redo it: snakemake --cores all -f results/runs/sft/model\.sha256"
MODEL_FAULTS = [
    ("truncated model.safetensors", "model.safetensors", _truncate, "load_model",
     r"{f}: \d+ bytes, \d+ when saved \(listed in {d}/checksums\.json\); " + _REDO),
    ("deleted model.safetensors", "model.safetensors", Path.unlink, "load_model",
     r"{f}: missing \(listed in {d}/checksums\.json\); " + _REDO),
    ("a changed byte in model.safetensors", "model.safetensors", _flip, "load_model",
     r"{f}: sha256 [0-9a-f]{{16}}… differs from the one written when the model was saved \({d}/checksums\.json\); "
     + _REDO),
    ("deleted tokenizer.json", "tokenizer.json", Path.unlink, "load_tokenizer",
     r"{f}: missing \(listed in {d}/checksums\.json\); " + _REDO),
]


@pytest.mark.parametrize("name, damage, loader, line", [m[1:] for m in MODEL_FAULTS], ids=[m[0] for m in MODEL_FAULTS])
def test_a_damaged_model_folder_is_named_by_path_when_loaded(saved_model, name, damage, loader, line):
    from dwakd import models

    getattr(models, loader)(saved_model)  # whole: loads
    damage(saved_model / name)
    with pytest.raises(DamagedModelError) as e:
        getattr(models, loader)(saved_model)
    want = line.format(f=re.escape(str(saved_model / name)), d=re.escape(str(saved_model)))
    assert re.fullmatch(want, str(e.value)), str(e.value)


def test_without_checksums_a_missing_tokenizer_json_is_named_as_such(tiny_pair, tmp_path):
    from dwakd.models import load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_pair / "student_base", folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(DamagedModelError, match=rf"^{re.escape(str(folder / 'tokenizer.json'))}: missing \(the "
                                                rf"folder has tokenizer_config\.json but no tokenizer file\)"):
        load_tokenizer(folder)


def test_without_checksums_a_truncated_model_names_the_folder(tiny_pair, tmp_path):
    from dwakd.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_pair / "student_base", folder)
    _truncate(folder / "model.safetensors")
    with pytest.raises(DamagedModelError, match=rf"^{re.escape(str(folder))}: the model cannot be loaded \(\w+: "):
        load_model(folder)


def test_quick_check_sees_truncation_and_deletion_without_reading(saved_model):
    assert quick_check(saved_model) is None and verify_model_dir(saved_model)
    _truncate(saved_model / "model.safetensors")
    assert "model.safetensors" in quick_check(saved_model)


# ------------------------------------------------------------------------- a failed rerun keeps the last result


def _run_folder_state(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture()
def train_setup(tiny_pair, tmp_path):
    from dwakd.data import SHIPPED_DATA, load_jsonl, write_jsonl

    data = tmp_path / "data"
    recs = load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[:16]
    write_jsonl(recs, data / "train.jsonl")
    write_jsonl(recs[:4], data / "dev.jsonl")
    args = ["train", "--set", "profile=tiny", "--set", "profiles.tiny.train.select_by=last", "--run", "sft",
            "--models", str(tiny_pair), "--data", str(data), "--out", str(tmp_path / "runs" / "sft"), "--resume"]
    return tmp_path / "runs" / "sft", args


def test_a_rerun_that_stops_on_a_nan_leaves_the_last_result_intact(train_setup, monkeypatch, capsys):
    from dwakd.cli import main
    from dwakd.train import Trainer

    out, args = train_setup
    assert main(args) == 0, capsys.readouterr().err
    before = _run_folder_state(out)
    assert {"model/model.safetensors", f"model/{CHECKSUMS}", "train_log.jsonl", "selection.json", RECEIPT,
            "resolved_config.yaml"} <= set(before)
    assert not staging_dir(out).exists() and not (out / "checkpoints").exists()
    verify_model_dir(out / "model")

    calls = {"n": 0}
    micro_step = Trainer.micro_step

    def nan_after_two(self, batch):  # the retrain diverges at its third micro-batch (as lr 1e3 did)
        loss, logs = micro_step(self, batch)
        calls["n"] += 1
        return (loss * float("nan"), logs) if calls["n"] > 2 else (loss, logs)

    monkeypatch.setattr(Trainer, "micro_step", nan_after_two)
    capsys.readouterr()
    rc = main([*args, "--set", "profiles.tiny.train.epochs=2"])  # other settings: a retrain from the start
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("dwakd")]  # (transformers' progress bars aside)
    assert rc == 2 and len(lines) == 1, err
    err = lines[0]
    assert re.fullmatch(r"dwakd train: error: non-finite loss nan at step 3 .*; "
                        rf"{re.escape(str(out))} still holds the last complete result \(model, train_log\.jsonl, "
                        r"selection\.json\)", err), err
    assert _run_folder_state(out) == before  # model, log, selection, receipt: byte for byte
    assert (staging_dir(out) / "checkpoints").is_dir()  # the attempt's last good checkpoint, for --resume


def test_publish_swaps_the_whole_run_folder_and_a_failed_publish_changes_nothing(tmp_path):
    out = tmp_path / "runs" / "x"
    (out / "model").mkdir(parents=True)
    (out / "model" / "w.bin").write_text("old")
    (out / "train_log.jsonl").write_text("old\n")
    staging = staging_dir(out)
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "w.bin").write_text("new")
    (staging / "train_log.jsonl").write_text("new\n")
    before = _run_folder_state(out)
    with pytest.raises(DataError, match=r"no complete model to publish .* is left as it was"):
        publish_run(staging, out, "redo")
    assert _run_folder_state(out) == before
    write_checksums(staging / "model")
    receipt = publish_run(staging, out, "snakemake --cores all -f x")
    assert receipt == out / RECEIPT and not staging.exists()
    assert (out / "model" / "w.bin").read_text() == "new" and (out / "train_log.jsonl").read_text() == "new\n"
    assert json.loads((out / "model" / CHECKSUMS).read_text())["redo"] == "snakemake --cores all -f x"
    assert receipt.read_text().endswith(f"  model/{CHECKSUMS}\n")


# ------------------------------------------------------------------------------------------------ config edges


CONFIG_FAULTS = [
    ("misspelled method name", {"runs.dwakd.method": "dwkad"},
     r"runs\.dwakd\.method: unknown method 'dwkad'; did you mean 'dwakd'\? \(registered: .*\)"),
    ("empty main_table", {"profiles.mini.main_table": []},
     r"profiles\.mini\.main_table: expected at least 1 item\(s\), got \[\]"),
    ("empty main_table and ablation_table", {"profiles.tiny.main_table": [], "profiles.tiny.ablation_table": [],
                                             "profile": "tiny"},
     r"profiles\.tiny\.main_table: expected at least 1 item\(s\), got \[\]"),
    ("unknown top-level key", {"bogus_key": 1},
     r"bogus_key: unknown key; expected one of: datasets, defaults, pairs, profile, profiles, rebuild_models, "
     r"report, results_dir, runs"),
]


@pytest.mark.parametrize("changes, line", [c[1:] for c in CONFIG_FAULTS], ids=[c[0] for c in CONFIG_FAULTS])
def test_a_config_fault_is_one_line_naming_the_key(changes, line):
    with pytest.raises(ConfigError) as e:
        C.check_all(_with(changes), C.method_specs())
    assert re.fullmatch(line, str(e.value)), str(e.value)


def test_an_empty_main_table_stops_the_dry_run_in_one_line(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"tiny": {"main_table": [], "ablation_table": []}}}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-d", str(tmp_path),
                        "--configfile", str(path), "--config", "profile=tiny"], capture_output=True, text=True,
                       env=_env())
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and "is extended by" not in ln]
    assert r.returncode != 0 and len(lines) == 1, "\n".join(lines[:20])
    assert re.fullmatch(r".*my\.yaml: profiles\.tiny\.main_table: expected at least 1 item\(s\), got \[\]", lines[0])


def test_a_schema_message_is_one_short_line_whatever_the_instance():
    big = {"x": "y" * 5000}
    import jsonschema

    from dwakd.config import _schema_error

    err = next(jsonschema.Draft202012Validator({"not": {"type": "object"}}).iter_errors(big))
    key, msg = _schema_error(err)
    assert "\n" not in msg and len(msg) < 320


def test_a_broken_config_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("profile: tiny\nmethods: {sft: [\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:\d+: not readable YAML"):
        C.load([C.DEFAULT_CONFIG, path])


# ------------------------------------------------------------------------------- one workflow per results folder


HOLD = ("import sys, time\nsys.path.insert(0, {root!r})\nfrom dwakd import lock\nlock.acquire({res!r}, {root!r})\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture()
def held_lock(tmp_path):
    """``results/tiny`` under ``tmp_path`` locked by another process (another checkout's workflow)."""
    res = tmp_path / "results" / "tiny"
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), res=str(res))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield res, proc.pid
    proc.kill()
    proc.wait()


def test_a_second_process_cannot_take_the_results_lock_and_is_told_who_holds_it(held_lock):
    from dwakd import lock

    res, pid = held_lock
    with pytest.raises(lock.ResultsLocked) as e:
        lock.acquire(res, ROOT)
    assert re.fullmatch(rf"{re.escape(str(res))}: in use by another workflow \(pid {pid} on .*, started .*, "
                        rf"checkout {re.escape(str(ROOT))}, working directory .*\); two workflows on one results "
                        r"folder would run the same jobs at once: wait for it to finish or stop it \(the lock, "
                        r".*\.dwakd\.lock, is released when that process ends\)", str(e.value)), str(e.value)
    assert lock.in_use(res).startswith(f"pid {pid} ")


def test_the_lock_goes_with_its_process(tmp_path):
    from dwakd import lock

    res = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), res=str(res))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert lock.in_use(res)
    proc.kill()  # SIGKILL: no clean-up ran
    proc.wait()
    lock.acquire(res, ROOT)
    lock.release(res)


def test_a_second_workflow_on_the_same_results_refuses_to_start_naming_the_holder(held_lock, tmp_path):
    res, pid = held_lock
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", "-d",
                        str(tmp_path), "--config", "profile=tiny"], capture_output=True, text=True, env=_env())
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and "is extended by" not in ln]
    assert r.returncode != 0 and len(lines) == 1, "\n".join(lines[:20])
    assert re.fullmatch(rf"dwakd: results/tiny: in use by another workflow \(pid {pid} on .*", lines[0]), lines[0]
    assert "rerun-incomplete" not in r.stdout + r.stderr
    assert not (res / "config.resolved.yaml").exists()  # nothing written under the holder's results
    # a dry run only reads: it shows the DAG, with a note
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-d",
                        str(tmp_path), "--config", "profile=tiny"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"dwakd: note: results/tiny is in use by another workflow (pid {pid} " in r.stderr
    assert not (res / "config.resolved.yaml").exists()


# ------------------------------------------------------------------------ a damaged model is redone by the workflow


def test_the_workflow_retrains_a_run_whose_model_was_damaged(saved_model, tmp_path):
    """``tmp_path/work/results/tiny/tiny/runs/sft``: a run's model truncated after it was saved. A dry run names
    it; a run removes its receipt, so that the train job (and what reads the model) runs again."""
    run = tmp_path / "work" / "results" / "tiny" / "tiny" / "runs" / "sft"
    run.parent.mkdir(parents=True)
    shutil.move(str(saved_model.parent), run)
    (run / "selection.json").write_text("{}")
    from dwakd.files import receipt_text

    (run / RECEIPT).write_text(receipt_text(run / "model"))
    _truncate(run / "model" / "model.safetensors")
    work = tmp_path / "work"
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--config",
            "profile=tiny"]
    r = subprocess.run([*base, "-n"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"dwakd: results/tiny/tiny/runs/sft/model/model\.safetensors: \d+ bytes, \d+ when saved .* "
                     r"the model folder is damaged; redo it: .* \(a run of the workflow removes "
                     r"results/tiny/tiny/runs/sft/model\.sha256 and retrains it\)", r.stderr), r.stderr[-2000:]
    assert (run / RECEIPT).exists()  # a dry run changes nothing
    # a run (of any target: here only the data) removes the receipt of the damaged model
    r = subprocess.run([*base, "--cores", "1", "results/tiny/data/train.jsonl"], capture_output=True, text=True,
                       env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(removed results/tiny/tiny/runs/sft/model.sha256: this run retrains it)" in r.stderr
    assert not (run / RECEIPT).exists() and (run / "model").is_dir()
    r = subprocess.run([*base, "-n", "results/tiny/tiny/runs/sft/model.sha256"], capture_output=True, text=True,
                       env=_env())
    assert "rule train:" in r.stdout + r.stderr


# ------------------------------------------------------------------------------------------- atomic probe tables


def test_write_probe_writes_every_file_under_a_temporary_name_first(tmp_path, monkeypatch):
    import pandas as pd

    from dwakd import attention

    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append((Path(a).name, Path(b).name)), real(a, b))[1])
    df = pd.DataFrame([{"run": "dwakd", "method": "DWA-KD", "n_samples": 2, "n_aligned_pairs": 5,
                        "mass_on_aligned": 0.1, "top1_on_aligned": 0.2, "chance": 0.05}],
                      columns=attention.PROBE_COLUMNS)
    attention.write_probe(df, tmp_path, "Dolly")
    for ext in ("csv", "md", "tex"):
        assert (f"alignment_probe.{ext}.tmp", f"alignment_probe.{ext}") in renamed, renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment_probe.csv", "alignment_probe.md",
                                                          "alignment_probe.tex"]

