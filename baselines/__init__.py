"""Cross-tokenizer KD baselines, one file per method, each registered by name."""
