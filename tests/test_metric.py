import pytest

from dwakd.evaluate import bits_per_byte, evaluate_copy, rouge_l, summarise


def test_identical_is_100_and_disjoint_is_0():
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l("dogs bark", ["the cat sat"]) == 0.0
    assert rouge_l("", ["the cat sat"]) == 0.0


def test_hand_computed_lcs_f1():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    # LCS("a b c d", "a x c y d") = 3 (a c d): P = 3/4, R = 3/5, F = 2/3
    assert rouge_l("a b c d", ["a x c y d"]) == pytest.approx(100 * 2 * 0.75 * 0.6 / 1.35)


def test_max_over_references():
    refs = ["completely different words", "the cat sat", "the cat"]
    assert rouge_l("the cat sat", refs) == pytest.approx(100.0)
    assert rouge_l("the cat", refs) == pytest.approx(100.0)


def test_stemming_and_case():
    assert rouge_l("The cats were running", ["the cat was run"]) == pytest.approx(100 * 3 / 4)


def test_summary_mean_std():
    s = summarise([10.0, 20.0, 30.0])
    assert s["mean"] == 20.0 and s["std"] == pytest.approx(10.0) and s["n"] == 3


def test_copy_floor():
    recs = [{"prompt": "x\n\n### Instruction:\nthe cat sat\n\n### Response:\n", "output": ["the cat sat"]}]
    assert evaluate_copy(recs)["summary"]["rougeL"]["mean"] == pytest.approx(100.0)


def test_bits_per_byte_uniform_model_is_log2_vocab_over_bytes(tiny_pair):
    """A model whose logits are all equal assigns log V nats to every token: bpb = n_tok·log2 V / bytes."""
    import math

    import torch

    from dwakd.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_pair / "student_base")
    model = load_model(tiny_pair / "student_base")
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            model.get_output_embeddings().bias.zero_()
    rec = {"prompt": "Say something.", "output": ["hello world"]}
    n_tok = len(tok("hello world", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    expected = n_tok * math.log2(len(tok)) / len("hello world".encode())
    assert bits_per_byte(model, tok, [rec]) == pytest.approx(expected, rel=1e-5)


def test_evaluate_model_stores_each_prompts_bits_and_bytes_whose_ratio_is_the_bpb(tiny_pair):
    """``bpb_samples``: per prompt (in the order of ``ids``) the response bits and bytes; Σ bits / Σ bytes is the
    summary's bpb and ``bits_per_byte``'s (the significance table resamples these prompts)."""
    import math

    from dwakd.evaluate import GenConfig, evaluate_model, response_nll_bytes
    from dwakd.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_pair / "student_base")
    model = load_model(tiny_pair / "student_base")
    recs = [{"id": f"r{i}", "prompt": f"Question {i}:", "output": [o]}
            for i, o in enumerate(["hello world", "a longer answer with more bytes", "café"])]
    res = evaluate_model(model, tok, recs, GenConfig(seeds=[10], max_new_tokens=4, batch_size=2))
    smp = res["bpb_samples"]
    assert res["ids"] == ["r0", "r1", "r2"] and len(smp["bits"]) == len(smp["bytes"]) == 3
    assert smp["bytes"] == [11, 31, 5]  # UTF-8 bytes of each gold response ("é" is 2)
    n, b = response_nll_bytes(model, tok, recs[1]["prompt"], recs[1]["output"][0], 256)
    assert smp["bits"][1] == pytest.approx(n / math.log(2)) and smp["bytes"][1] == b
    assert res["summary"]["bpb"] == pytest.approx(sum(smp["bits"]) / sum(smp["bytes"]))
    assert res["summary"]["bpb"] == pytest.approx(bits_per_byte(model, tok, recs), rel=1e-9)
    assert "bpb_samples" not in evaluate_model(model, tok, recs[:1], GenConfig(seeds=[10], max_new_tokens=2),
                                               with_bpb=False)
    assert "bpb_samples" not in evaluate_copy(recs)  # the floor has no bpb
