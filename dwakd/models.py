"""Model handling that is generic over Hugging Face causal LMs.

Embeddings, hidden states and the LM head are reached through the ``transformers`` API
(``get_input_embeddings``, ``output_hidden_states``, ``get_output_embeddings``), never through
attribute paths of one architecture, so GPT-2, OPT, Llama, Mistral and Qwen2 all work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


@dataclass
class LMOutput:
    """What a method may ask of a forward pass.

    logits: [B, L, V]; hidden: [B, L, d] last hidden state (after the final norm, as the head sees it);
    embeds: [B, L, d] input-embedding lookup of ``input_ids`` (in the autograd graph of the student).
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    embeds: torch.Tensor | None = None


def build_model(arch: str, vocab_size: int, tokenizer, **arch_kwargs) -> PreTrainedModel:
    """A randomly initialised causal LM of ``arch`` (a ``model_type`` such as "qwen2", "llama", "gpt2")."""
    cfg = AutoConfig.for_model(
        arch, vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **arch_kwargs,
    )
    return AutoModelForCausalLM.from_config(cfg)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM from a folder or a Hugging Face id."""
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """[V, d] output projection."""
    return model.get_output_embeddings().weight


def forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            hidden: bool = False, embeds: bool = False) -> LMOutput:
    """One forward pass returning what the method needs (see ``LMOutput``)."""
    emb = model.get_input_embeddings()(input_ids)
    out = model(inputs_embeds=emb, attention_mask=attention_mask, output_hidden_states=hidden, use_cache=False)
    return LMOutput(logits=out.logits, hidden=out.hidden_states[-1] if hidden else None,
                    embeds=emb if embeds else None)
