"""Model handling is generic over Hugging Face causal LMs: embeddings, hidden states and head through the API."""

import pytest
import torch

from dwakd.models import build_model, embed_dim, forward, hidden_dim, lm_head_weight, load_model, load_tokenizer

ARCHS = {
    "gpt2": dict(n_embd=32, n_layer=1, n_head=2, n_positions=128),
    "opt": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32,
                max_position_embeddings=128),
    "llama": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    "mistral": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64),
    "qwen2": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_returns_logits_hidden_and_embeddings(arch, tiny_pair, tmp_path):
    tok = load_tokenizer(tiny_pair / "student_base")
    model = build_model(arch, len(tok), tok, **ARCHS[arch])
    model.save_pretrained(tmp_path / arch)
    model = load_model(tmp_path / arch)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = forward(model, ids, mask, hidden=True, embeds=True)
    d = hidden_dim(model)
    assert d == embed_dim(model) == model.config.hidden_size
    assert out.logits.shape == (2, 4, len(tok))
    assert out.hidden.shape == (2, 4, d) and out.embeds.shape == (2, 4, d)
    # the hidden state is what the head reads: logits = hidden @ W_headᵀ (+ bias)
    head = model.get_output_embeddings()
    assert torch.allclose(head(out.hidden), out.logits, atol=1e-5)
    assert lm_head_weight(model).shape == (len(tok), d)
    # embeddings are in the graph: a loss on them reaches the embedding table
    out.embeds.sum().backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_tokenizer_of_a_qwen2_folder_keeps_its_own_pipeline(tmp_path, tiny_pair):
    """A self-built tokenizer saved beside a qwen2 model loads as saved: AutoTokenizer alone would pick
    Qwen2Tokenizer from the model's type and replace a SentencePiece-style pre-tokeniser (the spaces vanish)."""
    from dwakd.models import build_model, load_tokenizer

    student_tok = load_tokenizer(tiny_pair / "student_base")
    model = build_model("qwen2", len(student_tok), student_tok, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                        max_position_embeddings=64)
    model.save_pretrained(tmp_path / "m")
    student_tok.save_pretrained(tmp_path / "m")
    again = load_tokenizer(tmp_path / "m")
    text = "Name three primary colours, 2024."
    assert again.tokenize(text) == student_tok.tokenize(text)
    assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text
