"""Where a published model's files are: a local folder (``path``) or a Hugging Face id (``hf_id``, ``revision``).

Hub models are fetched once into the Hugging Face cache (``HF_HOME``) with ``huggingface_hub.snapshot_download``
(config, tokenizer and weight files only; safetensors when the repository has them, else ``*.bin``) and used
from there: the workflow links to the cached folder instead of copying a 7B model into the results.
"""

from __future__ import annotations

from pathlib import Path

from dwakd.errors import ConfigError

#: files a causal LM and its tokenizer need, besides the weights
META_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


def model_source(spec: dict, where: str) -> Path:
    """The local folder of the model entry ``spec`` (``where`` names it in errors, e.g. "pairs.X.student")."""
    if spec.get("path"):
        folder = Path(spec["path"]).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{where}.path: {folder} is not a model folder (no config.json)")
        return folder
    if not spec.get("hf_id"):
        raise ConfigError(f"{where}: a published model needs `hf_id` (a Hugging Face id) or `path` (a folder)")
    return snapshot(spec["hf_id"], spec.get("revision"), where)


def snapshot(repo_id: str, revision: str | None, where: str) -> Path:
    """The cached folder of ``repo_id`` at ``revision`` (downloaded unless cached; ``HF_HUB_OFFLINE=1`` uses the
    cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=META_PATTERNS + ["*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=META_PATTERNS + ["*.bin"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ConfigError(f"{where}.hf_id: cannot fetch {repo_id!r} (revision {revision or 'main'}) from the "
                          f"Hugging Face hub and it is not in the cache: {type(e).__name__}: {e}. Check the id, the "
                          f"network, `huggingface-cli login` for gated models, or set `path:` to a local copy") from e
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{where}.hf_id: {repo_id!r} has no config.json (not a transformers model?)")
    return folder
