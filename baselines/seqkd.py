"""SeqKD — sequence-level knowledge distillation (Kim & Rush, EMNLP 2016), as used by MiniLLM (Gu et al.,
ICLR 2024) and DSKD (Zhang et al., EMNLP 2024) for instruction following.

The student is fine-tuned with plain cross-entropy, ``CE = −Σ_i log p_s(y_i)``, on the *teacher's* sampled
responses instead of the gold ones. The data comes from a separate step, ``dwakd generate`` (workflow rule
``generate``, ``dwakd/generate.py``): the teacher samples one response per training prompt (temperature 1.0,
top-k 0, top-p 1.0, prompt ≤ 256 tokens, prompt + response ≤ 512 tokens, seed 10), written to
``generated/teacher_train.jsonl``, which the workflow passes to ``dwakd train --train-file`` for every run of
this method. ``dwakd train`` refuses a training file whose records do not come from ``dwakd generate``. The
dev set (checkpoint selection) keeps its gold responses.

Black-box and vocabulary-agnostic: only text crosses, the teacher is not run during training.
Empty generations keep the gold response by default (``generate.empty`` in the profile; see
``dwakd/generate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dwakd.methods.base import Method
from dwakd.methods.sft import SFT
from dwakd.registry import register


@dataclass
class SeqKDConfig:
    """SeqKD has no loss hyperparameters: the loss is the student's CE on the teacher's responses.

    The data comes from ``dwakd generate`` (the ``generate`` rule, settings in ``profiles.<p>.generate``:
    seed, temperature, top-k/top-p, prompt and total lengths, handling of empty generations), and the
    optimiser settings from the run's ``train`` section.
    """


@register
class SeqKD(Method):
    """SeqKD (see the module docstring)."""

    name = "seqkd"
    Config = SeqKDConfig
    citation = ("Kim & Rush 2016, 'Sequence-Level Knowledge Distillation', EMNLP 2016; teacher-sampled data as in "
                "MiniLLM (Gu et al., ICLR 2024) and DSKD (Zhang et al., EMNLP 2024, arXiv 2406.17328).")
    train_data = "teacher"
    loss = SFT.loss  # SFT's cross-entropy, on the teacher's samples
