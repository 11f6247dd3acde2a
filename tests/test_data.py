import gzip
import json

import pytest

from dwakd.data import (SHIPPED_DATA, DataError, copy_baseline, encode_sample, fetch_unni, load_jsonl,
                        prepare_set, select_unni, sha256_file, verify_checksums)

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def write_lines(path, lines):
    path.write_text("".join(l + "\n" for l in lines))
    return path


GOOD = json.dumps({"prompt": "P", "output": "O"})


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "P", "output": ', "malformed JSON"),
    (json.dumps({"output": "O"}), "field 'prompt' is missing"),
    (json.dumps({"prompt": "P"}), "field 'output' is missing"),
    (json.dumps({"prompt": "  ", "output": "O"}), "field 'prompt' is empty"),
    (json.dumps({"prompt": "P", "output": ""}), "field 'output' is empty"),
    (json.dumps({"prompt": 3, "output": "O"}), "field 'prompt' must be a string, got int"),
    (json.dumps({"prompt": "P", "output": 3.5}), "field 'output' must be a string or a list of strings, got float"),
    (json.dumps({"prompt": "P", "output": []}), "field 'output' is an empty list"),
    (json.dumps({"prompt": "P", "output": ["a", 1]}), "field 'output[1]' must be a string, got int"),
    (json.dumps(["P", "O"]), "expected a JSON object, got list"),
])
def test_loader_names_file_line_and_field(tmp_path, line, message):
    f = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, line])
    with pytest.raises(DataError) as e:
        load_jsonl(f)
    assert str(e.value).startswith(f"{f}:3: ")
    assert message in str(e.value)


def test_loader_normalises_outputs_and_reads_gzip(tmp_path):
    f = tmp_path / "ok.jsonl.gz"
    with gzip.open(f, "wt") as fh:
        fh.write(json.dumps({"prompt": "P", "output": "O"}) + "\n\n")
        fh.write(json.dumps({"prompt": "P2", "output": ["a", "b"]}) + "\n")
    recs = load_jsonl(f)
    assert [r["output"] for r in recs] == [["O"], ["a", "b"]]


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        load_jsonl(write_lines(tmp_path / "empty.jsonl", []))


def test_shipped_data_checksums_and_sizes():
    verify_checksums(SHIPPED_DATA)
    sizes = {name: len(load_jsonl(SHIPPED_DATA / f"{name}.jsonl.gz"))
             for name in ["dolly_train", "dolly_dev", "dolly_test", "selfinst", "vicuna", "sni"]}
    assert sizes == {"dolly_train": 11435, "dolly_dev": 1000, "dolly_test": 500, "selfinst": 242, "vicuna": 80,
                     "sni": 1694}


def test_checksum_mismatch_is_reported(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  a.txt\n")
    with pytest.raises(DataError, match="a.txt: sha256 .* does not match"):
        verify_checksums(tmp_path)


def test_copy_baseline_reads_instruction_and_input():
    p = ("Below is an instruction...\n\n### Instruction:\nSum these.\n\n### Input:\n1 and 2\n\n### Response:\n")
    assert copy_baseline(p) == "Sum these. 1 and 2"
    p2 = "Intro\n\n### Instruction:\nWhat is X?\n\n### Response:\n"
    assert copy_baseline(p2) == "What is X?"


def test_prepare_set_limits_and_adds_ids(tmp_path):
    n = prepare_set("vicuna", {"file": "vicuna.jsonl.gz"}, tmp_path / "v.jsonl", 5)
    recs = load_jsonl(tmp_path / "v.jsonl")
    assert n == 5 and [r["id"] for r in recs] == [f"vicuna-{i}" for i in range(5)]


def test_encode_sample_masks_prompt_and_appends_eos(tiny_pair):
    from dwakd.models import load_tokenizer

    tok = load_tokenizer(tiny_pair / "student_base")
    e = encode_sample(tok, "Hello there. ", "General Kenobi", max_prompt_len=256, max_len=512)
    p = tok("Hello there. ", add_special_tokens=False)["input_ids"]
    assert e.input_ids[: len(p)] == p and e.input_ids[-1] == tok.eos_token_id
    assert e.labels[: len(p)] == [-100] * len(p) and e.labels[len(p):] == e.input_ids[len(p):]
    short = encode_sample(tok, "Hello there. " * 20, "General Kenobi", max_prompt_len=4, max_len=6)
    assert short.prompt_len == 4 and len(short.input_ids) == 6


def test_unni_selection_fetch_cache_and_offline_error(tmp_path, monkeypatch):
    src = FIXTURES / "uinst_tiny.jsonl"
    recs = load_jsonl(src)
    sel = select_unni(recs, min_ref_words=11, limit=3)
    assert len(sel) == 3 and all(len(r["output"][0].split()) >= 11 for r in sel)
    assert select_unni(recs, limit=3) == recs[:3]  # default: 11_ as published, no whitespace re-filter
    kw = dict(repo_id="MiniLLM/uinst", filename="11_/valid.jsonl", revision="x", min_ref_words=11, limit=3,
              cache_dir=tmp_path / "cache")
    out = fetch_unni(tmp_path / "unni.jsonl", source=str(src), **kw)
    assert load_jsonl(out) == sel
    digest = (tmp_path / "cache" / "unni.jsonl.sha256").read_text().split()[0]
    assert digest == sha256_file(tmp_path / "cache" / "unni.jsonl")
    # cached: no source needed, no network touched
    import huggingface_hub

    def no_network(**_):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    fetch_unni(tmp_path / "unni2.jsonl", **kw)
    assert load_jsonl(tmp_path / "unni2.jsonl") == sel
    # corrupted cache is an error, not silently reused
    (tmp_path / "cache" / "unni.jsonl").write_text(GOOD + "\n")
    with pytest.raises(DataError, match="checksum does not match"):
        fetch_unni(tmp_path / "unni3.jsonl", **kw)
    # no cache and no network: a clear message that says what to do
    kw["cache_dir"] = tmp_path / "empty_cache"
    with pytest.raises(DataError, match="could not download MiniLLM/uinst/11_/valid.jsonl.*--unni-source"):
        fetch_unni(tmp_path / "unni4.jsonl", **kw)
