"""Model handling that is generic over Hugging Face causal LMs (GPT-2, OPT, Llama, Mistral, Qwen2).

Embeddings, hidden states and the LM head are reached through the ``transformers`` API
(``get_input_embeddings``, ``get_output_embeddings``), never through attribute paths of one architecture.
``forward`` takes the last hidden state from the LM head's own input (a forward pre-hook), so ``hidden`` is
always the vector the head multiplies, also for OPT models whose ``project_out`` maps the decoder's width to
``word_embed_proj_dim`` (OPT-350m).

Training set-up (``ModelSettings``, ``prepare_for_training``): dtype, gradient checkpointing (non-reentrant),
LoRA through ``peft``; ``save_trained`` writes a plain, merged model folder that ``load_model`` reads without
peft (plus the adapter under ``adapter/``). Notes per class: docs/models.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from dwakd.errors import ConfigError
from dwakd.files import DamagedModelError, folder_redo, verify_model_dir
from dwakd.settings import check_choice

#: the dtypes a model may be loaded / trained in, by their config name
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ADAPTER_DIR = "adapter"  # in a folder written by ``save_trained``: the LoRA adapter (peft format)


@dataclass
class LMOutput:
    """What a method may ask of a forward pass.

    logits: [B, L, V].
    hidden: [B, L, d_h] the last hidden state *as the LM head reads it* (after the final norm and, for OPT,
      after ``project_out``), so ``get_output_embeddings()(hidden) == logits``; ``d_h == hidden_dim(model)``.
    embeds: [B, L, d_e] the input-embedding lookup ``get_input_embeddings()(input_ids)`` (before position
      embeddings, OPT's ``project_in`` or any scaling inside the model); ``d_e == embed_dim(model)``. It is
      the tensor the model was run on, so it is in the student's autograd graph.
    For the five supported classes d_h == d_e (OPT: both are ``word_embed_proj_dim``).
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    #: bool [B, L] or None. When set, ``logits`` holds the rows of these positions only, ``[N, V]`` in row-major
    #: order (``forward(..., rows=...)``: the training loop asks the teacher for its response positions only);
    #: read logits with ``logits_at`` / ``logits_index``, which work for both layouts
    rows: torch.Tensor | None = None

    def _row_index(self) -> torch.Tensor:
        idx = torch.full(self.rows.shape, -1, dtype=torch.long, device=self.rows.device)
        idx[self.rows] = torch.arange(int(self.rows.sum()), device=self.rows.device)
        return idx

    def logits_at(self, mask: torch.Tensor) -> torch.Tensor:
        """The logits ``[n, V]`` at the positions of the bool ``mask [B, L]`` (row-major order), i.e.
        ``logits[mask]`` of the full layout; no copy when ``mask`` is exactly ``rows``."""
        if self.rows is None:
            return self.logits[mask]
        mask = mask.bool()
        if mask.shape == self.rows.shape and torch.equal(mask, self.rows):
            return self.logits
        return self._take(self._row_index()[mask])

    def logits_index(self, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The logits ``[n, V]`` at the positions ``(b[k], p[k])``, i.e. ``logits[b, p]`` of the full layout."""
        if self.rows is None:
            return self.logits[b, p]
        return self._take(self._row_index()[b, p])

    def row_index(self, b: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(flat logits [M, V], rows [n])`` with ``flat[rows] == logits_index(b, p)``, without copying the
        rows: for code that gathers them block by block."""
        if self.rows is None:
            return self.logits.flatten(0, -2), b * self.logits.size(1) + p
        idx = self._row_index()[b, p]
        if bool((idx < 0).any()):
            raise IndexError("LMOutput: asked for logits at positions outside ``rows``")
        return self.logits, idx

    def _take(self, idx: torch.Tensor) -> torch.Tensor:
        if bool((idx < 0).any()):
            raise IndexError("LMOutput: asked for logits at positions outside ``rows`` (the forward pass kept "
                             "only those)")
        return self.logits[idx]


# ------------------------------------------------------------------------------------------- settings


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _out_of_range(settings, name: str, where: str) -> ConfigError:
    """A value outside its field's range, named with the field's ``metadata["expected"]``: the words a wrong type
    gets from ``dwakd.settings.from_dict``."""
    f = next(f for f in dataclasses.fields(settings) if f.name == name)
    return ConfigError(f"{where}.{name}: expected {f.metadata['expected']}, got {getattr(settings, name)!r}")


@dataclass
class LoraSettings:
    """LoRA of a student (``peft.LoraConfig(task_type="CAUSAL_LM")``).

    Defaults: DSKD's TinyLLaMA scripts (LORA_RANK=256, LORA_ALPHA=8, LORA_DROPOUT=0.1). ``target_modules``
    "all-linear" is peft's: every ``nn.Linear`` and GPT-2 ``Conv1D`` except the output layer — for
    Llama/Mistral/Qwen2 exactly DSKD's list (q/k/v/o_proj, gate/up/down_proj), for GPT-2 c_attn, c_proj, c_fc,
    for OPT q/k/v/out_proj, fc1, fc2 (and project_in/out where present). A list names modules explicitly.
    """

    r: int = field(default=256, metadata={"expected": "a positive integer (the LoRA rank)"})
    alpha: float = field(default=8.0, metadata={"expected": "a positive number (lora_alpha)"})
    dropout: float = field(default=0.1, metadata={"expected": "a number in [0, 1)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={
        "expected": "'all-linear' or a non-empty list of module names (e.g. ['q_proj', 'v_proj']; GPT-2: "
                    "['c_attn'])"})

    def validate(self, where: str) -> None:
        t = self.target_modules
        modules = (isinstance(t, str) and t.strip() != "") or (
            isinstance(t, (list, tuple)) and len(t) > 0 and all(isinstance(x, str) and x for x in t))
        for name, ok in (("r", self.r >= 1), ("alpha", self.alpha > 0), ("dropout", 0.0 <= self.dropout < 1.0),
                         ("target_modules", modules)):
            if not ok:
                raise _out_of_range(self, name, where)

    def peft_config(self):
        from peft import LoraConfig

        t = self.target_modules
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=t if isinstance(t, str) else list(t), task_type="CAUSAL_LM")


@dataclass
class ModelSettings:
    """How a model is loaded and set up for training or inference: the settings of a pair's model entry
    (``pairs.<pair>.student``), built by ``dwakd.settings.from_dict`` (``dwakd.run.load_pair_model``).

    dtype: the weights' dtype ("float32" | "bfloat16" | "float16"). On CUDA the Trainer also autocasts to
      bf16, so a fully fine-tuned student is best kept in float32 (fp32 master weights, bf16 compute); bf16
      weights suit frozen teachers and the frozen base of a LoRA student (peft keeps the adapter in fp32).
    gradient_checkpointing: recompute the decoder layers in the backward pass (non-reentrant).
    lora: LoRA settings (``LoraSettings``), or None for full fine-tuning.
    attn_implementation: "eager" | "sdpa" | "flash_attention_2" | … (transformers' names); None = its default.
    """

    dtype: str = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    attn_implementation: str | None = field(default=None, metadata={
        "expected": "a transformers attention implementation name ('eager', 'sdpa', 'flash_attention_2', ...) "
                    "or null"})

    def validate(self, where: str) -> None:
        check_choice(where, "dtype", self.dtype, DTYPES)
        if self.lora is not None:
            self.lora.validate(f"{where}.lora")
        if self.attn_implementation == "":
            raise _out_of_range(self, "attn_implementation", where)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or its name in ``DTYPES`` ("bfloat16", ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"dtype: expected one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")


# --------------------------------------------------------------------------------------- build / load


def build_model(arch: str, vocab_size: int, tokenizer, **arch_kwargs) -> PreTrainedModel:
    """A randomly initialised causal LM of ``arch`` (a ``model_type`` such as "qwen2", "llama", "gpt2")."""
    cfg = AutoConfig.for_model(
        arch, vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **arch_kwargs,
    )
    return AutoModelForCausalLM.from_config(cfg)


def _source(path: str | Path, what: str) -> str:
    """``path`` as ``from_pretrained`` should get it: an existing model folder, or a valid hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        if what == "model" and not (p / "config.json").exists():
            hint = (" It holds a LoRA adapter only (adapter_config.json): load the merged model folder that "
                    "dwakd.models.save_trained writes beside it instead." if (p / "adapter_config.json").exists()
                    else "")
            raise FileNotFoundError(f"{p}: a folder without config.json, not a saved model folder "
                                    f"(save_pretrained / save_trained write one).{hint}")
        return str(p)
    if p.exists():
        raise FileNotFoundError(f"{p}: a file, not a model folder or a Hugging Face model id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(path))
    except HFValidationError:
        raise FileNotFoundError(f"{path}: no such {what} folder, and not a valid Hugging Face model id "
                                f"('name' or 'owner/name')") from None
    return str(path)


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32, revision: str | None = None,
               attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a causal LM from a local folder or a Hugging Face id (``revision``: a hub branch, tag or commit).

    A path that is neither an existing folder nor a valid hub id raises ``FileNotFoundError`` naming it; a hub
    id that cannot be fetched (unknown, or no network and not in the cache) raises ``OSError`` naming it."""
    src = _source(path, "model")
    kwargs: dict[str, Any] = {"dtype": as_dtype(dtype)}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if Path(src).is_dir():
        verify_model_dir(src)  # checksums written at save time: a damaged file is named, with how to redo it
        try:
            return AutoModelForCausalLM.from_pretrained(src, **kwargs)
        except Exception as e:  # noqa: BLE001 (safetensors, torch and transformers raise many kinds)
            raise DamagedModelError(f"{src}: the model cannot be loaded ({type(e).__name__}: "
                                    f"{_first_line(e)}); the folder is damaged or incomplete; "
                                    f"{folder_redo(src)}") from None
    try:
        return AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except OSError as e:
        raise OSError(f"{src}: could not load it from the Hugging Face hub (revision {revision or 'main'}): not a "
                      f"local folder, and the hub has no such model or cannot be reached ({e})") from e


# the files of tokenizers that need no tokenizer.json (sentencepiece, GPT-2's BPE files, tiktoken)
_SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "vocab.txt",
                         "tokenizer.tiktoken")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else "no detail")[:200]


#: the ``tokenizer_class`` a generic fast tokenizer (``dwakd.tokenization``'s) is saved under
_GENERIC_FAST = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _tokenizer_class(folder: Path):
    """``AutoTokenizer``, or the generic fast class for a folder whose tokenizer was saved as one: AutoTokenizer
    would pick the class of the model's ``model_type`` instead (a qwen2 folder → Qwen2Tokenizer, which replaces the
    saved normaliser and pre-tokeniser with Qwen's: a SentencePiece-style tokenizer then loses its spaces)."""
    from transformers import PreTrainedTokenizerFast

    cfg = folder / "tokenizer_config.json"
    saved = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.exists() else None
    return PreTrainedTokenizerFast if saved in _GENERIC_FAST else AutoTokenizer


def load_tokenizer(path: str | Path, revision: str | None = None):
    """The tokenizer of a model folder or hub id; ``pad = eos`` when it has no pad token (GPT-2, Llama,
    Mistral). Training right-pads and masks padding, generation left-pads with an attention mask, so a pad
    equal to EOS is never confused with a real EOS."""
    src = _source(path, "tokenizer")
    if Path(src).is_dir():
        verify_model_dir(src)
        folder = Path(src)
        if (not (folder / "tokenizer.json").exists() and (folder / "tokenizer_config.json").exists()
                and not any((folder / n).exists() for n in _SLOW_TOKENIZER_FILES)):
            raise DamagedModelError(f"{folder / 'tokenizer.json'}: missing (the folder has tokenizer_config.json but "
                                    f"no tokenizer file); the model folder is incomplete; "
                                    f"{folder_redo(folder)}")
        try:
            tok = _tokenizer_class(folder).from_pretrained(src)
        except Exception as e:  # noqa: BLE001
            raise DamagedModelError(f"{src}: the tokenizer cannot be loaded ({type(e).__name__}: {_first_line(e)}); "
                                    f"the folder is damaged or incomplete; {folder_redo(src)}") from None
    else:
        tok = AutoTokenizer.from_pretrained(src, **({"revision": revision} if revision else {}))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """[V, d] output projection (its d is ``hidden_dim``)."""
    return model.get_output_embeddings().weight


def pad_id(tokenizer, model) -> int:
    """The pad id to look up where a position has no token (``e(y)`` of a masked target): the tokenizer's, else the
    model config's, else EOS, else 0."""
    for src in (tokenizer, getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(src, attr, None) if src is not None else None
            if isinstance(v, int):
                return v
    return 0


def hidden_dim(model: PreTrainedModel) -> int:
    """The width of ``LMOutput.hidden`` (what the head reads; OPT: ``word_embed_proj_dim``, not hidden_size)."""
    return lm_head_weight(model).size(1)


def embed_dim(model: PreTrainedModel) -> int:
    """The width of ``LMOutput.embeds`` (the input-embedding table's; OPT: ``word_embed_proj_dim``)."""
    return model.get_input_embeddings().weight.size(1)


def position_limit(model) -> int | None:
    """The most positions ``model`` can read (``max_position_embeddings``, GPT-2's ``n_positions``), or None when
    its config names no limit."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, attr, None)
        if _is_int(v) and v > 0:
            return v
    return None


def check_position_limits(max_len: int, models: dict, key: str = "train.max_len") -> None:
    """Fail before any step when ``max_len`` (the config key ``key``) exceeds a model's position limit:
    ``models`` maps a role ("student", "teacher") to a model (None skipped). A GPT-2 student has 1,024
    positions; a longer batch would raise a bare ``IndexError`` in the middle of training."""
    for role, m in models.items():
        if m is None:
            continue
        limit = position_limit(m)
        if limit is not None and max_len > limit:
            name = getattr(getattr(m, "config", None), "_name_or_path", "") or type(m).__name__
            raise ConfigError(f"{key}: {max_len} tokens exceed the {role} model's position limit of {limit} "
                              f"({name}, {type(m).__name__}); set {key} to at most {limit}")


#: config attributes of models whose forward changes the logits after the LM head (then ``rows`` computes them
#: all and keeps the rows, instead of running the head on the rows only)
_POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            hidden: bool = False, embeds: bool = False, rows: torch.Tensor | None = None) -> LMOutput:
    """One forward pass returning what the method needs (see ``LMOutput``).

    The embeddings are looked up here and passed as ``inputs_embeds`` (so ``embeds`` is the tensor the model
    ran on); the last hidden state is captured at the LM head's input, without ``output_hidden_states``
    (which would also keep every layer's output). ``rows`` (bool [B, L]): keep the logits of these positions
    only (``LMOutput.rows``); the LM head then runs on those rows alone, so the full ``[B, L, V]`` logits are
    never formed (for a model whose forward changes the logits after its head, they are, and the rows kept)."""
    emb = model.get_input_embeddings()(input_ids)
    captured: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    cfg = getattr(model, "config", None)
    skip_head = rows is not None and not any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _POST_HEAD)
    handle = None
    if hidden or skip_head:
        def grab(_module, args, kwargs):
            h = args[0] if args else next(iter(kwargs.values()))
            captured.append(h)
            if skip_head:  # the head runs on no position inside the model: its [B, 0, V] output is dropped
                if args:
                    return (h[:, :0], *args[1:]), kwargs
                k = next(iter(kwargs))
                return args, {**kwargs, k: h[:, :0]}
            return None

        handle = head.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = model(inputs_embeds=emb, attention_mask=attention_mask, use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    h = None
    if hidden or skip_head:
        if not captured:
            raise RuntimeError(f"{type(model).__name__}: the LM head was not called in the forward pass, so the "
                               f"last hidden state could not be taken from its input")
        h = captured[-1]
        want = (h.shape[0], 0) if skip_head else tuple(out.logits.shape[:2])
        if tuple(h.shape[:2]) != tuple(input_ids.shape) or tuple(out.logits.shape[:2]) != want:
            raise RuntimeError(f"{type(model).__name__}: the LM head read {tuple(h.shape)} but the logits are "
                               f"{tuple(out.logits.shape)} (logits_to_keep?)")
    if rows is None:
        logits = out.logits
    else:
        rows = rows.bool()
        logits = head(h[rows]) if skip_head else out.logits[rows]
    return LMOutput(logits=logits, hidden=h if hidden else None, embeds=emb if embeds else None, rows=rows)


# ------------------------------------------------------------------------------------------- training


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Activation (gradient) checkpointing of ``model``'s layers with non-reentrant ``torch.utils.checkpoint``,
    through the name this transformers version has: ``activation_checkpointing_enable`` (5.x;
    ``gradient_checkpointing_enable`` is its deprecated alias, to be removed in 6) or
    ``gradient_checkpointing_enable`` (4.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_training(model: PreTrainedModel, settings: ModelSettings, where: str = "model"):
    """Set ``model`` up for training as ``settings`` say; returns the model to train (a ``PeftModel`` with LoRA).

    * dtype: the weights are cast to ``settings.dtype``;
    * attention: ``set_attn_implementation`` when ``settings.attn_implementation`` is given;
    * gradient checkpointing: ``enable_checkpointing`` (non-reentrant) and ``use_cache=False``
      (it recomputes only in ``train()`` mode, the Trainer's);
    * LoRA: ``peft.get_peft_model`` with ``LoraConfig(task_type="CAUSAL_LM")``: only the adapter has
      ``requires_grad`` (peft freezes the rest); with gradient checkpointing, ``enable_input_require_grads``
      also makes the embedding output require grad (a hook on the embedding module, which ``forward`` calls),
      so the checkpointed layers are in the graph even though the embedding table is frozen.
    """
    settings.validate(where)
    if is_peft_model(model):
        raise ValueError(f"{where}: the model is already a PeftModel; prepare the base model once")
    model = model.to(settings.torch_dtype)
    if settings.attn_implementation:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(settings.attn_implementation)
        else:  # older transformers
            model.config._attn_implementation = settings.attn_implementation
    if settings.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{where}.gradient_checkpointing: {type(model).__name__} does not support it")
        enable_checkpointing(model)
        model.config.use_cache = False
    if settings.lora is not None:
        from peft import get_peft_model

        if settings.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, settings.lora.peft_config())
    return model


def load_for_training(path: str | Path, settings: ModelSettings, revision: str | None = None,
                      where: str = "model"):
    """``load_model`` in ``settings.dtype`` (and attention), then ``prepare_for_training``."""
    settings.validate(where)
    model = load_model(path, settings.torch_dtype, revision, settings.attn_implementation)
    return prepare_for_training(model, settings, where)


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain ``transformers`` state dict of a ``PeftModel`` with its active LoRA adapters merged into the
    base weights (``W + B·A·alpha/r``, GPT-2's transposed Conv1D included), on the CPU. The model is not
    changed (nothing is merged in place, no copy of the model is made)."""
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    lora_layers = {n: m for n, m in inner.named_modules() if isinstance(m, LoraLayer)}
    sd: dict[str, torch.Tensor] = {}
    for k, v in inner.state_dict().items():
        if ".lora_" in k or k.startswith("lora_"):
            continue
        sd[k.replace(".base_layer.", ".")] = v.detach().cpu()
    with torch.no_grad():
        for name, mod in lora_layers.items():
            base = mod.get_base_layer()
            w = base.weight.detach()
            if not mod.merged:
                for a in mod.active_adapters:
                    if a in getattr(mod, "lora_A", {}) or a in getattr(mod, "lora_embedding_A", {}):
                        w = w + mod.get_delta_weight(a).to(w.dtype)
            sd[f"{name}.weight"] = w.cpu().clone()
    leftover = [k for k in sd if ".base_layer" in k or "modules_to_save" in k or "original_module" in k]
    if leftover:
        raise NotImplementedError(f"merged_state_dict: cannot map peft keys {leftover[:3]} to the base model")
    return sd


def save_trained(model, tokenizer, dest: str | Path, state_dict: dict | None = None) -> Path:
    """Write a trained model as a plain ``save_pretrained`` folder ``dest`` that ``load_model`` reads without
    peft, plus ``tokenizer`` (if given). A LoRA student (``PeftModel``) is saved merged (``merged_state_dict``)
    and its adapter alone goes to ``dest/adapter/`` (``PeftModel.save_pretrained``); any other model with
    ``state_dict`` when given (the full one gathered under FSDP / ZeRO-3), else its own. The model being trained
    is left as it was (safe to call mid-training). The saved config has ``use_cache`` on (generation)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if is_peft_model(model) else model
    use_cache = base.config.use_cache
    base.config.use_cache = True
    try:
        if is_peft_model(model):
            base.save_pretrained(dest, state_dict=merged_state_dict(model))
            model.save_pretrained(dest / ADAPTER_DIR)
        else:
            model.save_pretrained(dest, state_dict=state_dict)
    finally:
        base.config.use_cache = use_cache
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    return dest

