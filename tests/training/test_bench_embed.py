"""The benchmark's arithmetic: its FLOP count on a decoder small enough to count by hand, its per-cycle ratios."""

from __future__ import annotations

import numpy as np

from training.bench_embed import backbone_flops, speedups_by_cycle


def test_backbone_flops_counts_real_tokens_and_the_last_mlp_on_the_user_row_only():
    config = {
        "hidden_size": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 2,
        "num_hidden_layers": 2,
        "intermediate_size": 8,
    }
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # 3 and 2 real tokens
    # Per token and layer: q 4·4 + k 4·2 + v 4·2 + o 4·4 = 48 MACs, MLP 3·4·8 = 96 MACs.
    first_layer = (48 + 96) * 5
    last_layer = 48 * 5 + 96 * 2  # its MLP reads one row per user
    scores_and_values = 2 * (2 * 2 * 2 * 2 * (3**2 + 2**2))  # per layer 2·2·heads·n²·head_dim
    assert backbone_flops(config, mask) == 2 * (first_layer + last_layer) + scores_and_values


def test_speedups_by_cycle_pair_each_cycle_with_its_own_baseline():
    # A slow second cycle slows both backends: each cycle's ratio stays 2x although the overall medians would mix.
    assert speedups_by_cycle([1.0, 3.0], [0.5, 1.5]) == [2.0, 2.0]
