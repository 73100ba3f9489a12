"""``health``: the training-health tables of the stage metrics (reward trend, per-method means, largest values)."""

import pandas as pd
import pytest


def test_reward_trend_closed_form():
    import numpy as np

    from b2lib.evaluation.health import reward_trend

    rows = []
    for seed, slope in ((0, 0.01), (1, 0.02), (2, 0.03)):
        for stage in range(20):
            noise = 0.05 * (1 if stage % 4 in (0, 3) else -1)  # + - - +: orthogonal to 1 and to the stage
            rows.append({"method": "b2", "seed": seed, "stage": stage, "reward_mean": 0.3 + slope * stage + noise})
    t = reward_trend(pd.DataFrame(rows)).iloc[0]
    assert t["rise"] == pytest.approx(0.02 * 19) and t["seeds"] == 3 and t["stages"] == 20
    assert t["rise_low"] < t["rise"] < t["rise_high"]
    assert t["noise"] == pytest.approx(0.05 * np.sqrt(20 / 18))


def test_reward_trend_skips_missing_rewards_and_one_stage_runs():
    """A smoke run has one stage, and a stage without samples has no reward: neither may break the table."""
    from b2lib.evaluation.health import reward_trend

    rows = [{"method": "b2", "seed": s, "stage": k, "reward_mean": 0.5 + 0.1 * k} for s in (0, 1) for k in range(3)]
    rows += [{"method": "b2", "seed": 0, "stage": 3, "reward_mean": float("nan")}]
    rows += [{"method": "tree", "seed": 0, "stage": 0, "reward_mean": 0.4}]
    t = reward_trend(pd.DataFrame(rows)).set_index("method")
    assert t.loc["b2", "rise"] == pytest.approx(0.2) and t.loc["b2", "seeds"] == 2 and t.loc["b2", "stages"] == 3
    assert t.loc["tree", "seeds"] == 0 and pd.isna(t.loc["tree", "rise"])


def test_health_summary_means_per_method():
    from b2lib.evaluation.health import health_summary

    m = pd.DataFrame(
        {
            "method": ["b2", "b2", "ddpo"],
            "images": [32, 32, 32],
            "kept": [4, 6, 32],
            "flat_groups": [6, 4, 0],
            "approx_kl": [0.0, 0.0, 0.0],
            "rel_update": [1e-3, 3e-3, 4e-3],
        }
    )
    t = health_summary(m, branches=4)
    assert t.loc["b2", "kept"] == 5 and t.loc["b2", "groups"] == 8 and t.loc["b2", "rel_update"] == pytest.approx(2e-3)
    assert t.loc["ddpo", "kept"] == 32 and pd.isna(t.loc["ddpo", "groups"])


def test_health_table_joins_means_largest_values_and_trend():
    """The largest value of a stage shows next to the means (one bad stage must not hide), and the trend's rise."""
    from b2lib.evaluation.health import health_table

    rows = [
        {
            "method": "b2",
            "seed": s,
            "stage": k,
            "images": 32,
            "kept": 4,
            "approx_kl": 1e-4 * k,
            "kl": 0.1 * k,
            "clipfrac": 0.0,
            "reward_mean": 0.5 + 0.01 * k,
        }
        for s in (0, 1)
        for k in range(3)
    ]
    rows[4]["clipfrac"] = 0.25  # one stage of one seed clips
    t = health_table(pd.DataFrame(rows))
    assert t.loc["b2", "kl_max"] == pytest.approx(0.2) and t.loc["b2", "clipfrac_max"] == 0.25
    assert t.loc["b2", "approx_kl"] == pytest.approx(1e-4) and t.loc["b2", "kept"] == 4
    assert t.loc["b2", "rise"] == pytest.approx(0.02) and t.loc["b2", "seeds"] == 2
