"""Every method on every model class (GPT-2, OPT, Llama, Mistral, Qwen2), LoRA, bf16, gradient checkpointing.

Tiny random models of each class with tokenizers that follow each family's special-token conventions, trained
here with ``tokenizers`` and wrapped in the family's ``transformers`` tokenizer class, saved and loaded back with
``load_model`` / ``load_tokenizer`` (the hub path, offline). The OPT model is shaped like OPT-350m
(``word_embed_proj_dim`` < ``hidden_size``: ``project_in`` / ``project_out``, post-LN).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Tokenizer, LlamaTokenizer, Qwen2Tokenizer

from dwakd.data import SHIPPED_DATA, encode_sample, load_jsonl
from dwakd.errors import ConfigError
from dwakd.evaluate import GenConfig, bits_per_byte, generate
from dwakd.models import (
    ADAPTER_DIR,
    LoraSettings,
    ModelSettings,
    build_model,
    embed_dim,
    enable_checkpointing,
    forward,
    hidden_dim,
    load_model,
    load_tokenizer,
    prepare_for_training,
    save_trained,
)
from dwakd.registry import available, get_method
from dwakd.settings import from_dict
from dwakd.tokenization import corpus_texts, frequent_characters
from dwakd.train import TrainConfig, Trainer

CLASSES = ("gpt2", "opt", "llama", "mistral", "qwen2")

#: tokenizer family: pipeline, special tokens (in id order), the wrapper class and its special-token arguments
TOKENIZERS = {
    # GPT-2: <|endoftext|> is bos, eos and unk; no pad
    "gpt2": ("byte", ["<|endoftext|>"], GPT2Tokenizer, {}, 420),
    # OPT: GPT-2's BPE with <s>=0, <pad>=1, </s>=2, <unk>=3; </s> is bos and eos, and the tokenizer prepends it
    "opt": ("byte", ["<s>", "<pad>", "</s>", "<unk>"], GPT2Tokenizer,
            dict(bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True), 400),
    # Llama / Mistral: SentencePiece BPE (▁, byte fallback), <unk>=0, <s>=1, </s>=2, BOS prepended, no pad
    "llama": ("spm", ["<unk>", "<s>", "</s>"], LlamaTokenizer, dict(add_bos_token=True), 560),
    "mistral": ("spm", ["<unk>", "<s>", "</s>"], LlamaTokenizer, dict(add_bos_token=True), 520),
    # Qwen2: byte-level BPE, <|endoftext|> is eos and pad, no bos
    "qwen2": ("byte", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], Qwen2Tokenizer, {}, 460),
}

ARCHS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=1024),
    # like OPT-350m: project_in / project_out (word_embed_proj_dim < hidden_size), post-LN
    "opt": dict(hidden_size=48, word_embed_proj_dim=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                max_position_embeddings=1024, do_layer_norm_before=False),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=1024),
    "mistral": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, max_position_embeddings=1024, sliding_window=64),
    "qwen2": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=1024),
}

#: teacher → student: every class once in each role
PAIRS = [("qwen2", "gpt2"), ("mistral", "llama"), ("llama", "opt"), ("gpt2", "mistral"), ("opt", "qwen2")]
LORA_PAIR = ("mistral", "llama")  # the paper's Mistral-7B → TinyLLaMA-1.1B with LoRA
#: every registered method: the tests over them carry the method's name in their ids (`pytest -k <name>`)
METHODS = available()

TRAIN = dict(batch_size=2, max_steps=2, lr=1e-3, projector_lr=1e-3, max_prompt_len=48, max_len=96,
             select_by="last", progress=False, seed=3)


# ------------------------------------------------------------------------------------------ fixtures


def train_family_tokenizer(family: str, texts: list[str]):
    kind, specials, cls, kw, vocab = TOKENIZERS[family]
    if kind == "byte":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet = frequent_characters(texts, 120)
        trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False, initial_alphabet=alphabet,
                                      limit_alphabet=len(alphabet),
                                      special_tokens=specials + [f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return cls(vocab=model["vocab"], merges=merges, **kw)


@pytest.fixture(scope="session")
def records():
    recs = load_jsonl(SHIPPED_DATA / "dolly_train.jsonl.gz")[:300]
    return recs


@pytest.fixture(scope="session")
def train_records(records):
    short = [r for r in records if len(r["prompt"]) + len(r["output"][0]) < 400]
    return short[:4]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, records):
    """``zoo(cls)`` → folder of a tiny ``cls`` model with its family's tokenizer; ``zoo(cls, vocab_of=other)`` →
    the same class on ``other``'s tokenizer (a same-vocabulary teacher for Vanilla KD). Built once each."""
    root = tmp_path_factory.mktemp("zoo")
    texts = corpus_texts(records)
    toks: dict = {}
    built: dict = {}

    def get(cls: str, vocab_of: str | None = None):
        fam = vocab_of or cls
        key = (cls, fam)
        if key not in built:
            if fam not in toks:
                toks[fam] = train_family_tokenizer(fam, texts)
            tok = toks[fam]
            torch.manual_seed(len(built))
            model = build_model(cls, len(tok), tok, **ARCHS[cls])  # config ids from the raw tokenizer (no pad)
            folder = root / f"{cls}-{fam}"
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            built[key] = folder
        return built[key]

    return get


def load_pair(zoo, teacher_cls, student_cls, method_cls):
    student = load_model(zoo(student_cls))
    stok = load_tokenizer(zoo(student_cls))
    teacher = ttok = None
    if method_cls.needs_teacher:
        folder = zoo(teacher_cls, vocab_of=student_cls if getattr(method_cls, "same_vocabulary", False) else None)
        teacher = load_model(folder).eval()
        teacher.requires_grad_(False)
        ttok = load_tokenizer(folder)
    return student, stok, teacher, ttok


def method_overrides(name, stok, ttok, tmp_path) -> dict:
    if name == "mined":  # the vocabulary map, as `dwakd vocab-map` writes it
        from dwakd.vocab_map import mined_vocab_map, write_vocab_map

        path = tmp_path / "vocab_map.json"
        write_vocab_map(path, mined_vocab_map(ttok, stok, workers=1), ttok, stok)
        return {"vocab_map": str(path)}
    if name == "cma_ga":
        return {"disc_hidden": 16}
    return {}


def make_method(name, student, teacher, stok, ttok, tmp_path):
    cls = get_method(name)
    cfg = from_dict(cls.Config, method_overrides(name, stok, ttok, tmp_path), f"test.{name}")
    return cls(cfg, student, teacher, stok, ttok)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict, module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def logged_losses(out_dir) -> list[float]:
    lines = [json.loads(x) for x in (out_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [x["loss"] for x in lines if "loss" in x]


def probe(tok):
    ids = tok("### Instruction:\nName a colour.\n\n### Response:\nBlue", add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    return ids, torch.ones_like(ids)


def trainer_saves_merged() -> bool:
    return "save_trained" in inspect.getsource(Trainer.save_model)


# ---------------------------------------------------------------------------------------- the classes


@pytest.mark.parametrize("cls", CLASSES)
def test_class_outputs_tokens_and_left_padding(cls, zoo, records):
    """forward's hidden is what the head reads and embeds the lookup; encode_sample and left-padded
    generation behave for the family's tokenizer."""
    folder = zoo(cls)
    model, tok = load_model(folder).eval(), load_tokenizer(folder)
    # special tokens after load_tokenizer: a pad always; pad = eos where the family has none
    kind, specials, _, kw, _ = TOKENIZERS[cls]
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    if cls in ("gpt2", "llama", "mistral", "qwen2"):
        assert tok.pad_token_id == tok.eos_token_id
    else:
        assert tok.pad_token == "<pad>" and tok.bos_token == tok.eos_token == "</s>"
    assert model.config.eos_token_id == tok.eos_token_id
    if cls == "qwen2":
        assert tok.bos_token is None

    # encode_sample: prompt without BOS (even where the tokenizer prepends one), output + EOS
    r = records[0]
    e = encode_sample(tok, r["prompt"], r["output"][0], 64, 512)
    p = tok(r["prompt"], add_special_tokens=False)["input_ids"][:64]
    assert e.input_ids[:len(p)] == p and e.input_ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in e.input_ids[:-1] and e.labels[:len(p)] == [-100] * len(p)
    if kw.get("add_bos_token"):
        assert tok("x")["input_ids"][0] == tok.bos_token_id and e.input_ids[0] != tok.bos_token_id
    assert tok.decode(e.input_ids[len(p):], skip_special_tokens=True).strip() == r["output"][0].strip()

    # forward: head(hidden) == logits, dims from the model's tables (OPT: word_embed_proj_dim)
    ids = torch.tensor([e.input_ids[:12], e.input_ids[:10] + [tok.pad_token_id] * 2])
    mask = torch.tensor([[1] * 12, [1] * 10 + [0] * 2])
    out = forward(model, ids, mask, hidden=True, embeds=True)
    d = hidden_dim(model)
    assert out.hidden.shape == (2, 12, d) and out.embeds.shape == (2, 12, embed_dim(model))
    assert torch.allclose(model.get_output_embeddings()(out.hidden), out.logits, atol=1e-5)
    if cls == "opt":
        assert d == 32 != model.config.hidden_size
    # right padding does not change the real positions
    alone = forward(model, ids[1:, :10], mask[1:, :10]).logits
    assert torch.allclose(alone, out.logits[1:, :10], atol=1e-4)

    # left-padded batched generation (evaluate.generate) = each prompt alone; first-step logits equal
    prompts = [records[1]["prompt"], records[2]["prompt"][:60]]
    g = GenConfig(top_k=1, max_new_tokens=4, max_prompt_len=48, batch_size=2, seeds=[10])
    batched = generate(model, tok, prompts, g, seed=10)
    single = [generate(model, tok, [q], GenConfig(**{**g.__dict__, "batch_size": 1}), seed=10)[0] for q in prompts]
    assert batched == single
    enc = [tok(q, add_special_tokens=False)["input_ids"][:48] for q in prompts]
    L = max(map(len, enc))
    left = torch.tensor([[tok.pad_token_id] * (L - len(x)) + x for x in enc])
    lmask = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in enc])
    kw_gen = dict(do_sample=False, max_new_tokens=1, output_logits=True, return_dict_in_generate=True,
                  pad_token_id=tok.pad_token_id)
    first = model.generate(input_ids=left, attention_mask=lmask, **kw_gen).logits[0]
    for b, x in enumerate(enc):
        ref = model.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                             **kw_gen).logits[0][0]
        assert torch.allclose(first[b], ref, atol=1e-4), f"{cls}: left padding changes the next-token logits"
    assert math.isfinite(bits_per_byte(model, tok, records[:2], 48))


def test_the_method_tests_see_every_method():
    assert {"sft", "seqkd", "vanilla_kd", "dskd", "uld", "mined", "dskd_cma", "dskd_eta", "cma_ga", "dwakd"} <= set(METHODS)


@pytest.mark.parametrize("teacher_cls,student_cls", PAIRS)
@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_every_method_trains_on_every_class(name, teacher_cls, student_cls, zoo, train_records, tmp_path):
    """Each registered method, 2 steps: finite loss, parameters move, ``model/`` is saved and loads."""
    out = tmp_path / name
    student, stok, teacher, ttok = load_pair(zoo, teacher_cls, student_cls, get_method(name))
    method = make_method(name, student, teacher, stok, ttok, tmp_path)
    before, mbefore = snapshot(student), snapshot(method)
    cfg = from_dict(TrainConfig, TRAIN, "test.train")
    Trainer(method, student, teacher, stok, ttok, cfg, out).fit(train_records)
    losses = logged_losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (name, losses)
    assert changed(before, student), f"{name}: {teacher_cls} → {student_cls}: no student parameter changed"
    if mbefore:
        assert changed(mbefore, method), f"{name}: the method's parameters did not change"
    saved = load_model(out / "model").eval()
    load_tokenizer(out / "model")
    ids, mask = probe(stok)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(saved(input_ids=ids, attention_mask=mask).logits,
                              student(input_ids=ids, attention_mask=mask).logits, atol=1e-5), name


# ---------------------------------------------------------------------------------------------- LoRA


LORA = LoraSettings(r=4, alpha=8.0, dropout=0.1)


@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_lora_students_every_method(name, zoo, train_records, tmp_path):
    """Llama student with LoRA and gradient checkpointing (the paper's TinyLLaMA set-up), every method: only the
    adapter (and the method's own parameters) change; the merged folder reproduces the PeftModel's logits."""
    teacher_cls, student_cls = LORA_PAIR
    settings = ModelSettings(gradient_checkpointing=True, lora=LORA)
    out = tmp_path / name
    base, stok, teacher, ttok = load_pair(zoo, teacher_cls, student_cls, get_method(name))
    student = prepare_for_training(base, settings)
    trainable = {k for k, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    method = make_method(name, student, teacher, stok, ttok, tmp_path)
    before, mbefore = snapshot(student), snapshot(method)
    cfg = from_dict(TrainConfig, TRAIN, "test.train")
    Trainer(method, student, teacher, stok, ttok, cfg, out).fit(train_records)
    assert all(math.isfinite(x) for x in logged_losses(out))
    moved = changed(before, student)
    assert moved and moved <= trainable, f"{name}: {sorted(moved - trainable)[:3]} changed"
    assert any("lora_B" in k for k in moved)
    if mbefore:
        assert changed(mbefore, method)
    # the merged, plain folder; the adapter beside it; the student itself untouched by saving
    kept = snapshot(student)
    dest = save_trained(student, stok, tmp_path / f"{name}-merged")
    assert (dest / ADAPTER_DIR / "adapter_config.json").exists() and (dest / "config.json").exists()
    assert not changed(kept, student)
    merged = load_model(dest).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    ids, mask = probe(stok)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits,
                              student(input_ids=ids, attention_mask=mask).logits, atol=1e-4), name
    if trainer_saves_merged():  # once Trainer.save_model writes through save_trained
        assert (out / "model" / ADAPTER_DIR).exists()
        assert torch.allclose(load_model(out / "model")(input_ids=ids).logits, merged(input_ids=ids).logits)


@pytest.mark.parametrize("cls", CLASSES)
def test_save_trained_merges_lora_of_every_class(cls, zoo, tmp_path):
    """The merged weights of each class (GPT-2's transposed Conv1D, OPT's project_in/out, tied heads) give the
    PeftModel's logits, and agree with peft's own ``merge_and_unload`` on a copy."""
    folder = zoo(cls)
    torch.manual_seed(0)
    student = prepare_for_training(load_model(folder), ModelSettings(lora=LORA)).eval()
    with torch.no_grad():
        for k, p in student.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)  # a trained-looking adapter (peft initialises B = 0)
    dest = save_trained(student, load_tokenizer(folder), tmp_path / "m")
    merged = load_model(dest).eval()
    reference = copy.deepcopy(student).merge_and_unload().eval()
    ids, mask = probe(load_tokenizer(dest))
    with torch.no_grad():
        want = student(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, want, atol=1e-4)
        assert torch.allclose(reference(input_ids=ids, attention_mask=mask).logits, want, atol=1e-4)
    assert (dest / ADAPTER_DIR / "adapter_model.safetensors").exists()
    assert json.loads((dest / "config.json").read_text())["use_cache"] is True


# ----------------------------------------------------------------------- gradient checkpointing / bf16


def checkpointing_on(model) -> bool:
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"  # renamed in transformers 5
    return getattr(model, name)


def _loss_and_grads(model, ids, mask, labels):
    out = forward(model, ids, mask, hidden=True, embeds=True)
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
    loss = -logp.gather(-1, labels[:, 1:, None]).mean() + out.hidden.pow(2).mean() + out.embeds.pow(2).mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", ["llama", "gpt2"])
def test_gradient_checkpointing_same_loss_and_gradients(cls, zoo):
    folder = zoo(cls)
    tok = load_tokenizer(folder)
    ids, mask = probe(tok)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    mask[1, -3:] = 0
    for lora in (None, LORA):
        torch.manual_seed(1)
        plain = prepare_for_training(load_model(folder), ModelSettings(lora=lora)).train()
        ckpt = copy.deepcopy(plain)
        ckpt_model = ckpt.get_base_model() if lora else ckpt
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # not through a name deprecated by this transformers
            enable_checkpointing(ckpt_model)
        if lora:
            ckpt_model.enable_input_require_grads()
        assert checkpointing_on(ckpt_model)
        torch.manual_seed(2)
        l1, g1 = _loss_and_grads(plain, ids, mask, ids)
        torch.manual_seed(2)
        l2, g2 = _loss_and_grads(ckpt, ids, mask, ids)
        assert torch.allclose(l1, l2, atol=1e-6)
        assert g1.keys() == g2.keys() and g1
        if lora:
            assert all("lora_" in k for k in g1)
        for k in g1:
            assert torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4), k
    # prepare_for_training's own switch
    m = prepare_for_training(load_model(folder), ModelSettings(gradient_checkpointing=True))
    assert checkpointing_on(m) and m.config.use_cache is False


def test_lora_with_checkpointing_keeps_embeddings_in_the_graph(zoo):
    """LoRA + checkpointing: gradients reach the adapter; ``embeds`` requires grad (methods with embeds=True)."""
    folder = zoo("llama")
    student = prepare_for_training(load_model(folder), ModelSettings(gradient_checkpointing=True, lora=LORA))
    student.train()
    ids, mask = probe(load_tokenizer(folder))
    out = forward(student, ids, mask, hidden=True, embeds=True)
    assert out.embeds.requires_grad and out.hidden.requires_grad
    (out.logits.float().logsumexp(-1).mean() + out.embeds.pow(2).mean()).backward()
    grads = {k for k, p in student.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in k for k in grads)
    assert any("layers.0." in k and "lora_A" in k for k in grads)  # the first checkpointed layer too


@pytest.mark.parametrize("name", METHODS, ids=METHODS)
def test_bf16_weights_train_on_cpu(name, zoo, train_records, tmp_path):
    """bf16 weights without autocast (the Trainer autocasts only on CUDA): every method, OPT teacher → Qwen2
    student, and (DSKD-CMA) a bf16 LoRA base (Llama), take finite steps."""
    settings = from_dict(ModelSettings, {"dtype": "bfloat16"}, "test.student")
    runs = [(name, "opt", "qwen2", settings)]
    if name == "dskd_cma":
        runs.append((name, *LORA_PAIR, ModelSettings(dtype="bfloat16", gradient_checkpointing=True, lora=LORA)))
    for name, teacher_cls, student_cls, s in runs:
        base, stok, teacher, ttok = load_pair(zoo, teacher_cls, student_cls, get_method(name))
        student = prepare_for_training(base, s)
        if teacher is not None:
            teacher = teacher.to(torch.bfloat16)
        assert student.get_input_embeddings().weight.dtype == torch.bfloat16
        method = make_method(name, student, teacher, stok, ttok, tmp_path)
        before = snapshot(student)
        out = tmp_path / f"{name}-{student_cls}"
        Trainer(method, student, teacher, stok, ttok, from_dict(TrainConfig, TRAIN, "t"), out).fit(train_records)
        assert all(math.isfinite(x) for x in logged_losses(out)), name
        assert changed(before, student), name
    # bf16 on disk, fp32 by default
    assert load_model(tmp_path / f"{name}-qwen2" / "model").dtype == torch.float32


@pytest.mark.gpu
def test_cuda_bf16_lora_checkpointing(zoo, train_records, tmp_path):
    """On CUDA (bf16 autocast in the Trainer): bf16 LoRA student with checkpointing, bf16 teacher, DWA-KD."""
    settings = ModelSettings(dtype="bfloat16", gradient_checkpointing=True, lora=LORA)
    base, stok, teacher, ttok = load_pair(zoo, *LORA_PAIR, get_method("dwakd"))
    student = prepare_for_training(base, settings).cuda()
    teacher = teacher.to("cuda", torch.bfloat16)
    method = make_method("dwakd", student, teacher, stok, ttok, tmp_path).cuda()
    cfg = from_dict(TrainConfig, TRAIN, "test.train")
    Trainer(method, student, teacher, stok, ttok, cfg, tmp_path / "run").fit(train_records)
    assert all(math.isfinite(x) for x in logged_losses(tmp_path / "run"))
    dest = save_trained(student, stok, tmp_path / "merged")
    merged = load_model(dest, dtype=torch.bfloat16).cuda().eval()
    ids, mask = probe(stok)
    student.eval()
    with torch.no_grad():
        a = merged(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.float()
        b = student(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.float()
    assert (a - b).abs().max() < 0.1


# ------------------------------------------------------------------------------------------- settings


def test_model_settings_from_dict():
    s = from_dict(ModelSettings, {"dtype": "bfloat16", "gradient_checkpointing": True,
                                 "lora": {"r": 256, "alpha": 8, "dropout": 0.1}}, "models.student")
    assert s.torch_dtype == torch.bfloat16 and s.lora == LoraSettings(256, 8.0, 0.1, "all-linear")
    assert from_dict(ModelSettings, None, "x") == ModelSettings()
    assert from_dict(ModelSettings, {"lora": None}, "x").lora is None
    assert from_dict(ModelSettings, {"lora": {}}, "x").lora == LoraSettings()
    assert from_dict(ModelSettings, {"lora": {"target_modules": ["c_attn"]}}, "x").lora.target_modules == ["c_attn"]


@pytest.mark.parametrize("d,needle", [
    ({"lora": {"rank": 4}}, r"models\.student\.lora: unknown option\(s\) \['rank'\].*accepts \['alpha', 'dropout'"),
    ({"dtype": "bf16"}, r"models\.student\.dtype: expected one of \['bfloat16', 'float16', 'float32'\], got 'bf16'"),
    ({"precision": "bf16"}, r"models\.student: unknown option\(s\) \['precision'\]"),
    ({"gradient_checkpointing": "yes"}, r"models\.student\.gradient_checkpointing: expected true or false"),
    ({"lora": {"r": 0}}, r"models\.student\.lora\.r: expected a positive integer"),
    ({"lora": {"r": 4.5}}, r"models\.student\.lora\.r: expected a positive integer"),
    ({"lora": {"dropout": 1.5}}, r"models\.student\.lora\.dropout: expected a number in \[0, 1\)"),
    ({"lora": {"alpha": "8"}}, r"models\.student\.lora\.alpha: expected a positive number"),
    ({"lora": {"target_modules": []}}, r"models\.student\.lora\.target_modules: expected 'all-linear' or a non-empty"),
    ({"lora": 4}, r"models\.student\.lora: expected a mapping"),
    ({"attn_implementation": 3}, r"models\.student\.attn_implementation: expected"),
    ([1], r"models\.student: expected a mapping"),
])
def test_bad_model_settings_are_named(d, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(ModelSettings, d, "models.student")


def test_load_model_errors_name_the_path(zoo, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such model folder, and not a valid Hugging Face"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="a folder without config.json"):
        load_model(tmp_path)
    adapter_only = tmp_path / "adapter"
    prepare_for_training(load_model(zoo("llama")), ModelSettings(lora=LORA)).save_pretrained(adapter_only)
    with pytest.raises(FileNotFoundError, match="LoRA adapter only"):
        load_model(adapter_only)
    with pytest.raises(ConfigError, match="dtype: expected one of"):
        load_model(zoo("llama"), dtype="bf16")
    assert load_model(zoo("llama"), dtype="bfloat16").dtype == torch.bfloat16
