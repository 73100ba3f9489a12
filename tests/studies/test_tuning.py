"""The search's bookkeeping: pruning after the first seed and the choice among fully-run points."""

import pandas as pd

from b2lib.experiments.experiment import RunConfig
from b2lib.studies.tuning import choose, survivors, sweep_runs

GRID = {"lr": (1e-3, 3e-3), "grad_accum": (1, 4)}


def _table(rows):
    return pd.DataFrame(rows, columns=["method", "lr", "grad_accum", "seed", "gain"])


def test_sweep_runs_one_folder_per_method_point_seed(tmp_path):
    runs = sweep_runs(RunConfig(), tmp_path, methods=("ddpo", "b2"), seeds=(0, 1), grid=GRID)
    assert len(runs) == 2 * 4 * 2
    assert len({cfg.output_dir for _, cfg in runs}) == len(runs)
    point, cfg = runs[0]
    assert cfg.overrides == point and cfg.eval_splits == ("train",) and not cfg.save_lora


def test_survivors_prune_points_far_below_the_best_first_seed(tmp_path):
    runs = sweep_runs(RunConfig(), tmp_path, methods=("b2",), seeds=(0, 1), grid=GRID)
    first = _table(
        [("b2", 1e-3, 1, 0, 0.01), ("b2", 1e-3, 4, 0, -0.05), ("b2", 3e-3, 1, 0, -0.2), ("b2", 3e-3, 4, 0, -0.0901)]
    )
    later = [r for r in runs if r[1].seeds[0] == 1]
    kept = survivors(later, first, margin=0.1, grid=GRID)
    assert sorted((p["lr"], p["grad_accum"]) for p, _ in kept) == [(1e-3, 1), (1e-3, 4)]


def test_choose_takes_the_best_mean_among_fully_run_points():
    table = _table(
        [
            ("b2", 1e-3, 1, 0, 0.01),
            ("b2", 1e-3, 1, 1, -0.02),  # mean -0.005
            ("b2", 1e-3, 4, 0, 0.00),
            ("b2", 1e-3, 4, 1, 0.002),  # mean 0.001: chosen
            ("b2", 3e-3, 1, 0, 0.05),
        ]
    )  # one seed only (pruned): not eligible
    best = choose(table, GRID)["b2"]
    assert (best["lr"], best["grad_accum"]) == (1e-3, 4) and abs(best["mean_gain"] - 0.001) < 1e-12


def test_sweep_plot_draws_a_grid_with_one_value_of_the_hue():
    """A search over the learning rate alone (one grad_accum) still plots: seaborn cannot dodge a single hue level."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from b2lib.reporting.plots import sweep_plot

    table = pd.DataFrame({"method": "b2", "lr": [1e-4, 3e-4, 1e-4], "grad_accum": 1, "gain": [0.03, 0.01, 0.05]})
    fig = sweep_plot(table)
    assert len(fig.axes) == 1
