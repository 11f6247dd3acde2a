"""The sampling settings shared by the evaluation protocol and SeqKD's teacher generations (torch-free).

``SamplingConfig`` declares the decoding fields once, with the protocol's defaults (DSKD's evaluation scripts);
``dwakd.evaluate.GenConfig`` (the protocol: seeds, limits) and ``dwakd.generate.TeacherGenConfig`` (SeqKD's data:
seed, chunks, the empty-sample policy; SeqKD's defaults where they differ) extend it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingConfig:
    """How ``dwakd.evaluate.generate`` samples one response per prompt: softmax at ``temperature``, nucleus
    ``top_p``, ``top_k`` (0 = off), no repeated n-gram of ``no_repeat_ngram_size`` (0 = off); the prompt cut to
    its first ``max_prompt_len`` tokens, at most ``max_new_tokens`` new tokens, ``batch_size`` prompts a batch."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    no_repeat_ngram_size: int = 6
    max_prompt_len: int = 256
    max_new_tokens: int = 256
    batch_size: int = 32
