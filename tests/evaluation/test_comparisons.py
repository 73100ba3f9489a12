"""``comparisons``: learning vs drift from paired evaluations of runs trained on a reward and on its negation
(``sign_control``), and the pairs of a run with a reference run (``reference_pairs``)."""

import numpy as np
import pandas as pd
import pytest
from fake_runs import PROMPTS, fake_run

from b2lib.evaluation.comparisons import sign_control


def test_signal_and_drift_match_their_closed_form(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, len(PROMPTS))
    runs = []
    for seed in (0, 1, 2):
        up, down = 0.2 + 0.01 * seed, -0.1  # trained on the reward: +0.2; on its negation: -0.1 (per image)
        runs.append(fake_run(tmp_path / f"pos{seed}", 1, "b2", seed, base, base + up))
        runs.append(fake_run(tmp_path / f"neg{seed}", -1, "b2", seed, base, base + down))
    row = sign_control(runs, metrics=("reward",)).iloc[0]
    assert row["seeds"] == 3 and row["images"] == len(PROMPTS)
    assert row["gain"] == pytest.approx(0.21)
    assert row["signal"] == pytest.approx((0.21 + 0.1) / 2)
    assert row["drift"] == pytest.approx((0.21 - 0.1) / 2)
    assert row["gain"] == pytest.approx(row["signal"] + row["drift"])
    # the only variation is the seed offset of the positive runs: every interval is narrow and holds its estimate
    for name in ("gain", "signal", "drift"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
        assert row[f"{name}_high"] - row[f"{name}_low"] < 0.03


def test_unpaired_runs_are_refused(tmp_path):
    base = np.full(len(PROMPTS), 0.5)
    a = fake_run(tmp_path / "a", 1, "ddpo", 0, base, base)
    b = tmp_path / "b"
    fake_run(b, -1, "ddpo", 0, base, base)
    im = pd.read_csv(b / "eval_images.csv")
    im["prompt"] = im["prompt"] + " (other)"
    im.to_csv(b / "eval_images.csv", index=False)
    with pytest.raises(ValueError, match="paired"):
        sign_control([a, b])


def test_a_seed_without_its_negated_run_is_left_out(tmp_path):
    base = np.full(len(PROMPTS), 0.5)
    runs = [
        fake_run(tmp_path / "pos0", 1, "b2", 0, base, base + 0.1),
        fake_run(tmp_path / "neg0", -1, "b2", 0, base, base),
        fake_run(tmp_path / "pos1", 1, "b2", 1, base, base + 0.3),
    ]
    row = sign_control(runs, metrics=("reward",)).iloc[0]
    assert row["seeds"] == 1 and row["signal"] == pytest.approx(0.05)


def test_reference_pairs_compare_namesakes_and_the_references_other_methods():
    from b2lib.evaluation.comparisons import reference_pairs

    assert reference_pairs(["b2"], ["b2"], "@r") == [("b2", "b2@r")]
    assert reference_pairs(["ddpo"], ["b2"], "@r") == [("b2@r", "ddpo")]
    assert reference_pairs(["ddpo", "b2"], ["b2", "tree"], "@r") == [
        ("b2", "b2@r"),
        ("tree@r", "ddpo"),
        ("tree@r", "b2"),
    ]
