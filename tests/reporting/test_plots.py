"""``b2lib.reporting.plots``: what a figure shows is what its table says."""

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from b2lib.reporting.plots import X_LABELS, curves_grid, factor_lines  # noqa: E402


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


# --- one style: the method -> colour rule and the helpers every figure uses ---------------------------------------

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from b2lib.reporting.plot_style import (  # noqa: E402
    METHOD_COLOURS,
    legend_outside,
    method_colour,
    method_dashes,
    method_key,
    method_order,
    value_ticks,
)
from b2lib.reporting.plots import (  # noqa: E402
    comparison_grid,
    interval_plot,
    ratio_bars,
    smooth_stages,
    tradeoff,
    training_curves,
)
from b2lib.studies.levers import census_plot  # noqa: E402
from b2lib.studies.sparsity import sparsity_plot  # noqa: E402


def _metrics(methods=("ddpo", "b2", "tree")):
    rows = [
        {"method": m, "seed": s, "stage": k, "images_seen": 32 * (k + 1), "unet_rows_seen": 100 * (k + 1) + s,
         "reward_mean": 0.1 * k + s, "template": "counting"}
        for m in methods for s in (0, 1) for k in range(3)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _line_colours(fig):
    return {to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}


def test_every_method_has_its_own_colour():
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)


def test_variants_take_their_methods_colour_and_unknown_names_keep_theirs():
    assert method_key("b2@ppo") == "b2" and method_key("b2 · bf16") == "b2" and method_key("tree2_flat") == "tree2_flat"
    assert method_colour("ddpo@grpo") == METHOD_COLOURS["ddpo"]
    assert method_colour("something_new") == method_colour("something_new")  # stable, from a hash of the name
    dashes = method_dashes(["b2@ppo", "b2@grpo", "ddpo@ppo"])
    assert dashes["b2@ppo"] == "" and dashes["b2@grpo"] != "" and dashes["ddpo@ppo"] == ""


def test_method_order_puts_base_first_and_known_methods_in_one_order():
    assert method_order(["tree", "b2", "other", "base", "ddpo"]) == ["base", "ddpo", "b2", "tree", "other"]


def test_one_method_has_one_colour_across_figure_functions():
    curves = training_curves(_metrics(), ["reward_mean"])
    grid = curves_grid(_metrics(), ["reward_mean"])
    for fig in (curves, grid):
        assert _line_colours(fig) == {to_hex(method_colour(m)) for m in ("ddpo", "b2", "tree")}
    census = census_plot(pd.DataFrame({"method": ["b2", "tree"], "split_step": [10, 10], "measured": [0.1, 0.2],
                                       "predicted": [0.1, float("nan")]}))  # fmt: skip
    assert to_hex(census.axes[0].get_lines()[0].get_color()) == method_colour("b2")
    gain = pd.DataFrame({"reward": ["clip", "judge"] * 2, "positive_rate": [1.0, 0.3] * 2,
                         "method": ["b2", "b2", "ddpo", "ddpo"], "diff": 0.1, "low": 0.0, "high": 0.2})  # fmt: skip
    points = sparsity_plot(gain).axes[0].containers
    assert [to_hex(c.lines[0].get_color()) for c in points] == [method_colour("ddpo"), method_colour("b2")]


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_sit_outside_every_axes():
    figs = [
        training_curves(_metrics(), ["reward_mean"]),
        curves_grid(_metrics(), ["reward_mean", "unet_rows_seen"]),
        tradeoff(
            pd.DataFrame(
                {
                    "method": ["base", "b2"],
                    "clip_diversity": [0.3, 0.4],
                    "judge_all_ok": [0.1, 0.2],
                    "template": "counting",
                }
            )
        ),  # fmt: skip
    ]
    for fig in figs:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        assert all(ax.get_legend() is None for ax in fig.axes)
        box = legend.get_window_extent(renderer)
        assert not any(_overlaps(box, ax.get_window_extent(renderer)) for ax in fig.axes)
        plt.close(fig)


def test_legend_outside_moves_an_axes_legend_below():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="b2")
    ax.legend()
    legend = legend_outside(ax, "below")
    fig.canvas.draw()
    assert ax.get_legend() is None and legend.get_window_extent().y1 <= ax.get_window_extent().y0


def test_value_ticks_are_the_measured_values_as_integers():
    fig, ax = plt.subplots()
    value_ticks(ax, [5.0, 10.0, 15.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "15"]
    value_ticks(ax, [0.5, 0.7])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.7"]


def test_factor_lines_labels_each_factor_axis_and_ticks_integers():
    table = pd.DataFrame({"factor": ["split_start"] * 3, "value": [5.0, 10.0, 15.0], "judge_all_ok": [0.4, 0.5, 0.6]})
    ax = factor_lines(table, metrics=("judge_all_ok",)).axes[0]
    assert ax.get_xlabel() and [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "15"]


def test_intervals_are_named_as_95_percent_intervals():
    table = pd.DataFrame({"template": "counting", "metric": "reward", "a": ["b2"], "b": ["base"], "diff": [0.1],
                          "low": [0.0], "high": [0.2]})  # fmt: skip
    assert "95 % interval" in interval_plot(table).axes[0].get_xlabel()
    gain = table.assign(reward="judge", positive_rate=0.3, method="b2")
    fig = sparsity_plot(gain)
    assert "95 % interval" in fig.legends[0].get_title().get_text()
    assert "positive rate 0.30" in fig.axes[0].get_xticklabels()[0].get_text()
    assert not [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1 and line.get_ls() == "-"
                and to_hex(line.get_color()) == method_colour("b2")]  # fmt: skip  # no line joins two rewards


def test_ratio_bars_writes_values_clear_of_whiskers_and_explains_colours():
    table = pd.DataFrame({"measurement": ["a", "b"], "min": [0.9, 1.0], "median": [1.0, 1.5], "max": [1.4, 1.6],
                          "goal": [1.2, None]})  # fmt: skip
    fig = ratio_bars(table)
    texts = fig.axes[0].texts
    assert [float(t.get_text()) for t in texts] == [1.0, 1.5]
    assert all(t.get_position()[0] > m for t, m in zip(texts, table["max"]))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "median below its goal" in labels and "no goal set" in labels


def test_comparison_grid_wraps_prompts_so_titles_do_not_touch():
    images = {m: [np.zeros((8, 8, 3), dtype=np.uint8)] * 3 for m in ("base", "b2")}
    prompts = ["a blue circle above a yellow square"] * 3
    fig = comparison_grid(images, prompts, columns=3)
    fig.canvas.draw()
    titles = [ax.title.get_window_extent() for ax in fig.axes[:3]]
    assert all("\n" in ax.get_title() for ax in fig.axes[:3])
    assert not any(_overlaps(a, b) for a, b in zip(titles, titles[1:]))
    assert to_hex(fig.axes[3].yaxis.label.get_color()) == method_colour("b2")


def test_smooth_stages_is_a_trailing_mean_within_each_run():
    m = pd.DataFrame({"method": ["b2"] * 4 + ["ddpo"] * 4, "seed": 0, "stage": [3, 0, 1, 2] * 2,
                      "reward_mean": [4.0, 1.0, 2.0, 3.0, 40.0, 10.0, 20.0, 30.0]})  # fmt: skip
    out = smooth_stages(m, ["reward_mean"], 2).sort_values(["method", "stage"])
    assert out["reward_mean"].tolist() == [1.0, 1.5, 2.5, 3.5, 10.0, 15.0, 25.0, 35.0]  # never across runs
    assert m["reward_mean"].tolist()[0] == 4.0  # the input is left as it was
    label = training_curves(m, ["reward_mean"], x="stage", smooth=2).axes[0].get_ylabel()
    assert "last 2 stages" in label
