"""Localisation on constructed metric tables: noise floor, first divergence, positions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from impdiff.compare.localise import describe_positions, localise, noise_floor
from impdiff.compare.metrics import logit_metrics, tensor_metrics

TAPS = ["attn_norm", "Qcur", "kqv", "attn_out", "ffn_out", "l_out"]


def table(n_layer=12, n_pos=200, seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(n_layer):
        for tap in TAPS:
            err = noise * rng.lognormal(0.0, 0.3, n_pos)
            rows.append(pd.DataFrame({"layer": layer, "tap": tap, "position": np.arange(n_pos),
                                      "rel_l2": err, "cos": 1 - err ** 2 / 2}))
    return pd.concat(rows, ignore_index=True)


def inject(df, layer, tap, positions, error, downstream=0.3):
    """A fault at (layer, tap); everything after it in computation order carries error."""
    df = df.copy()
    order = {t: i for i, t in enumerate(TAPS)}
    after = (df.layer > layer) | ((df.layer == layer) & (df.tap.map(order) >= order[tap]))
    hit = after & df.position.isin(positions)
    df.loc[hit, "rel_l2"] = np.where((df.layer == layer) & (df.tap == tap), error, downstream)[hit]
    return df


def test_clean_noise_is_no_divergence():
    verdict, summary = localise(table(), 12)
    assert not verdict.diverged
    assert len(summary) == 12 * len(TAPS)


def test_window_fault_names_layer_tap_and_positions_despite_downstream_pollution():
    df = inject(table(), layer=5, tap="kqv", positions=range(120, 200), error=0.6)
    verdict, _ = localise(df, 12, {5: "global attention"})
    assert verdict.diverged and (verdict.layer, verdict.tap) == (5, "kqv")
    assert verdict.positions_text == "positions ≥ 120"
    assert "layer 5 (global attention), `kqv`, positions ≥ 120" in verdict.sentence()


def test_fault_in_the_first_layer_with_every_layer_polluted():
    df = inject(table(), layer=0, tap="Qcur", positions=range(200), error=5.0, downstream=2.0)
    verdict, _ = localise(df, 12)
    assert (verdict.layer, verdict.tap, verdict.positions_text) == (0, "Qcur", "all positions")


def test_a_few_noisy_positions_do_not_make_a_divergence():
    df = table()
    spike = (df.layer == 7) & (df.tap == "attn_out") & (df.position == 33)
    df.loc[spike, "rel_l2"] = 0.9
    assert not localise(df, 12)[0].diverged


def test_noise_floor_is_per_tap():
    df = table()
    df.loc[df.tap == "ffn_out", "rel_l2"] *= 3
    floor = noise_floor(df)
    assert floor["ffn_out"] > 2.5 * floor["kqv"]


def test_describe_positions():
    total = list(range(100))
    assert describe_positions(list(range(40, 100)), total) == "positions ≥ 40"
    assert describe_positions(list(range(40, 100, 2)), total) == "positions ≥ 40 (30 of the 60 from there)"
    assert describe_positions([3, 4, 5, 9], total) == "positions 3-5, 9"
    assert describe_positions(total, total) == "all positions"


def test_tensor_metrics_known_values():
    b = np.array([[3.0, 4.0], [1.0, 0.0]])
    a = np.array([[3.0, 4.0], [0.0, 1.0]])
    m = tensor_metrics(a, b)
    np.testing.assert_allclose(m["rel_l2"], [0.0, np.sqrt(2)])
    np.testing.assert_allclose(m["cos"], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(m["max_abs"], [0.0, 1.0])


def test_logit_metrics_known_values():
    b = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    a = np.log(np.array([[0.7, 0.2, 0.1], [0.8, 0.1, 0.1]]))
    m = logit_metrics(a, b, k=2)
    assert m["kl"][0] < 1e-12 and m["kl"][1] > 1.0
    assert m["top1"].tolist() == [1.0, 0.0]
