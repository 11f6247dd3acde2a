"""dwakd: a reproducibility suite for cross-tokenizer knowledge distillation."""

__version__ = "0.1.0"
