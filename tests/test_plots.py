"""``b2lib.plots``: what a figure shows is what its table says."""

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from b2lib.plots import X_LABELS, curves_grid, factor_lines  # noqa: E402


def test_factor_lines_shows_the_mean_over_seeds_with_a_std_bar():
    table = pd.DataFrame({"factor": ["branches"] * 4, "value": [4, 2, 4, 2], "judge_all_ok": [0.5, 0.1, 0.7, 0.3]})
    fig = factor_lines(table, metrics=("judge_all_ok",))
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [2.0, 4.0]
    assert list(line.get_ydata()) == [0.2, 0.6]  # means, in the order of the values, not one point per seed


def test_curves_grid_names_its_x_axis():
    metrics = pd.DataFrame(
        {
            "method": ["b2"] * 4,
            "seed": [0, 0, 1, 1],
            "images_seen": [32, 64] * 2,
            "unet_rows_seen": [10, 20] * 2,
            "reward_mean": [0.1, 0.2, 0.1, 0.3],
            "template": "counting",
        }
    )
    for x in ("images_seen", "unet_rows_seen"):
        fig = curves_grid(metrics, ["reward_mean"], x=x)
        assert fig.axes[0].get_xlabel() == X_LABELS[x]
