"""The claims as data and the rule that gives each its verdict (``b2lib.reporting.claims``), on closed cases."""

import pandas as pd

from b2lib.reporting.claims import (
    EXTENSIONS,
    KL_FLOOR,
    PAPER_CLAIMS,
    STATUS_WORDS,
    claim_status,
    learned,
    pair_label,
    strong_support,
)


def _r(diff: float, low: float, high: float) -> pd.Series:
    return pd.Series({"diff": diff, "low": low, "high": high, "resolved": low > 0 or high < 0})


def test_claim_rule_closed_cases():
    up = _r(0.1, 0.02, 0.2)  # z = 0.1 / (0.18 / 3.92) = 2.18
    strong = _r(0.1, 0.06, 0.14)  # z = 4.9: survives any Bonferroni correction here
    edge = _r(0.032, 0.003, 0.071)  # z = 1.84: resolved, but an edge hit
    flat = _r(0.01, -0.02, 0.05)
    down = _r(-0.1, -0.2, -0.02)
    assert claim_status([up, up], [1, 1]) == "reproduced"
    assert claim_status([down], [-1]) == "reproduced"
    assert claim_status([strong, flat], [1, 1]) == "partly"
    assert claim_status([up, flat], [1, 1]) == "not reproduced"  # z = 2.18 < 2.24, the threshold for k = 2
    assert claim_status([flat, down], [1, 1]) == "not reproduced"  # resolved the wrong way counts against
    # one edge hit among seven checks is what chance gives: not "partly"
    assert claim_status([edge] + [flat] * 6, [1] * 7) == "not reproduced"
    assert claim_status([strong] + [flat] * 6, [1] * 7) == "partly"
    # short of partly, runs that did not learn make it inconclusive; runs that learned keep "not reproduced"
    assert claim_status([edge] + [flat] * 6, [1] * 7, learned=False) == "inconclusive"
    assert claim_status([flat], [1], learned=True) == "not reproduced"
    assert claim_status([up, up], [1, 1], learned=False) == "reproduced"  # health never overrides a result


def test_bonferroni_threshold_grows_with_the_number_of_checks():
    r = _r(0.1, 0.02, 0.2)  # z = 2.18: beyond 1.96 (k = 1), 2.24 (k = 2)? no, 2.69 (k = 7)? no
    assert strong_support(r, 1, 1) and not strong_support(r, 1, 2) and not strong_support(r, 1, 7)
    assert not strong_support(r, -1, 1)  # the wrong direction never supports


def test_learning_needs_both_a_moving_policy_and_a_rising_reward():
    assert learned(pd.Series({"approx_kl": 1e-6, "rise_low": 0.01}))
    assert not learned(pd.Series({"approx_kl": KL_FLOOR / 10, "rise_low": 0.01}))
    assert not learned(pd.Series({"approx_kl": 1e-6, "rise_low": -0.01}))


def test_claims_have_unique_keys_words_for_both_parts_and_named_pairs():
    keys = [c.key for c in PAPER_CLAIMS + EXTENSIONS]
    assert len(keys) == len(set(keys))
    assert set(STATUS_WORDS["paper"]) == set(STATUS_WORDS["extension"])
    assert STATUS_WORDS["extension"]["reproduced"] == "shown"
    assert pair_label("b2", "ddpo") == "B² − DDPO" and pair_label("x", "base", " (PPO)") == "x − base (PPO)"
