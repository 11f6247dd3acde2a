"""Pure alignment functions between two tokenizations (token strings and offsets in, index pairs out)."""

from dwakd.align.tokens import (
    DEFAULT_EOS,
    SPACE_MARKERS,
    VOCAB_MAP_RULES,
    build_vocab_map,
    canonical_markers,
    dtw_align,
    exact_token_alignment,
    invert_vocab_map,
    normalise_token,
    offsets_alignment,
    one_to_one,
    strip_markers,
    vocab_marker,
    whole_character_tokens,
)

__all__ = [
    "DEFAULT_EOS", "SPACE_MARKERS", "VOCAB_MAP_RULES", "build_vocab_map", "canonical_markers", "dtw_align",
    "exact_token_alignment", "invert_vocab_map", "normalise_token", "offsets_alignment", "one_to_one",
    "strip_markers", "vocab_marker", "whole_character_tokens",
]
