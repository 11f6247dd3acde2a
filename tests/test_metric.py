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
    # batched forward passes (``response_bits_bytes``) vs one per record (``bits_per_byte``): float tolerance
    assert res["summary"]["bpb"] == pytest.approx(bits_per_byte(model, tok, recs), rel=1e-5)
    assert res["bpb_ids"] == res["ids"]  # by default bpb and ROUGE-L cover the same (all) records
    assert "bpb_samples" not in evaluate_model(model, tok, recs[:1], GenConfig(seeds=[10], max_new_tokens=2),
                                               with_bpb=False)
    assert "bpb_samples" not in evaluate_copy(recs)  # the floor has no bpb


def test_batched_bits_equal_the_per_record_forward_including_a_truncated_record(tiny_pair, dolly_small):
    """``response_bits_bytes`` (length-sorted, right-padded batches with an attention mask) gives each record the
    bits and bytes of ``response_nll_bytes`` (one forward per record), in the records' order, whatever the
    batch size, also for a record whose response is cut at ``max_len`` (only the scored tokens' bytes count)."""
    import math

    import torch

    from dwakd.evaluate import _length_batches, response_bits_bytes, response_nll_bytes
    from dwakd.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_pair / "student_base")
    model = load_model(tiny_pair / "student_base")
    torch.manual_seed(0)
    recs = [dict(r) for r in dolly_small[:9]]
    recs.append({"prompt": "Say something.", "output": ["x"]})  # a very short record
    long = " ".join(r["output"][0] for r in dolly_small[:40])  # > 256 tokens of response
    recs.insert(3, {"prompt": dolly_small[50]["prompt"], "output": [long + " café"]})
    max_prompt_len, max_len = 48, 160  # the long record: prompt + response > max_len, so it is cut
    want = [response_nll_bytes(model, tok, r["prompt"], r["output"][0], max_prompt_len, max_len) for r in recs]
    lengths = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"][:max_prompt_len])
               + len(tok(r["output"][0], add_special_tokens=False)["input_ids"]) + 1 for r in recs]
    assert lengths[3] > max_len and want[3][1] < len(recs[3]["output"][0].encode())  # truncated: fewer bytes
    assert len(set(lengths)) > 5  # records of different lengths: padding in every batch
    for batch_size, max_tokens in ((4, 32768), (32, 32768), (5, 300), (1, 0)):  # (5, 300): some batches cut
        got = response_bits_bytes(model, tok, recs, max_prompt_len, max_len, batch_size, max_tokens)
        assert got["bytes"] == [b for _, b in want]
        for g, (n, _) in zip(got["bits"], want):
            assert g == pytest.approx(n / math.log(2), rel=1e-4)
    # a forward without logits_to_keep (all logits), and one that takes it but ignores it: the same numbers

    class NoKeep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask=None, **kw):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)

    class Ignores(NoKeep):
        def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)

    for wrapped in (NoKeep(model), Ignores(model)):
        got = response_bits_bytes(wrapped, tok, recs, max_prompt_len, max_len, 4)
        assert got["bits"] == pytest.approx([n / math.log(2) for n, _ in want], rel=1e-4)
    model.train()
    response_bits_bytes(model, tok, recs[:2], max_prompt_len, max_len)
    assert model.training  # the mode is restored
    # the batches: length-sorted, at most batch_size records and max_tokens padded positions (a longer record alone)
    assert _length_batches([5, 1, 3, 3, 9], 2, 0) == [[1, 2], [3, 0], [4]]
    assert _length_batches([5, 1, 3, 3, 9], 4, 9) == [[1, 2, 3], [0], [4]]


def test_rouge_on_the_first_limit_records_and_bpb_on_the_first_bpb_limit(tiny_pair):
    """``GenConfig.limit`` cuts the sampled ROUGE-L records (``ids``; the copy floor too), ``bpb_limit`` the bits
    per byte records (``bpb_ids``, the order of ``bpb_samples``); 0 = all."""
    from dwakd.evaluate import GenConfig, bits_per_byte, evaluate_model
    from dwakd.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_pair / "student_base")
    model = load_model(tiny_pair / "student_base")
    recs = [{"id": f"r{i}", "prompt": f"Question {i}:", "output": [f"answer number {i} " * (i + 1)]}
            for i in range(5)]
    res = evaluate_model(model, tok, recs, GenConfig(seeds=[10], max_new_tokens=2, limit=2))
    assert res["ids"] == ["r0", "r1"] and len(res["seeds"]["10"]["scores"]) == 2
    assert res["bpb_ids"] == [r["id"] for r in recs] and len(res["bpb_samples"]["bits"]) == 5
    assert res["summary"]["bpb"] == pytest.approx(bits_per_byte(model, tok, recs), rel=1e-5)
    res = evaluate_model(model, tok, recs, GenConfig(seeds=[10], max_new_tokens=2, limit=2, bpb_limit=3))
    assert res["bpb_ids"] == ["r0", "r1", "r2"] and len(res["bpb_samples"]["bytes"]) == 3
    assert evaluate_copy(recs, 2)["ids"] == ["r0", "r1"] and evaluate_copy(recs)["ids"] == [r["id"] for r in recs]
