"""Writes notebooks/10_gradient_snr.ipynb (the cells are the notebook; this script keeps them reviewable)."""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell("""# 10 · How much of a stage's gradient is signal? DDPO's and B²'s estimators, measured

Notebook 09 found that every update follows the reward (its *signal* is above zero) and loses as much to *drift*. A
simple model (docstring of `b2lib.gradient_snr`) says the best learning rate then gains in proportion to the images
generated times the **signal-to-noise ratio per image** of the policy gradient, whatever the batch size: at a fixed
budget only a better estimator helps. B² changes exactly the estimator (branches share a prefix, so each sample has a
baseline that saw the same start; the interval trains only late steps), so this notebook measures it directly.

At the base model, `draws` independent stages of each method are sampled, and the gradient of the trainer's own loss
(PPO-clip at ratio 1: the mean of `-A grad log p`) is taken per denoising step. From the Gram matrix of the draws:
signal = mean of the cross products (unbiased for the true gradient's squared norm), noise = mean squared norm minus
signal, `snr` = their ratio for one stage, `snr_per_image` = that over the stage's images, and `images_for_snr1` =
how many images one stage would need for its gradient's signal to equal its noise. Intervals: delete-one jackknife
over draws. Rewards: the preset's CLIPScore, the world's binary all-correct judge (the truly sparse reward), and
`Redness` (mean red minus mean green and blue), the positive control: a dense reward that RL learns in a few stages
(`tests/test_learning.py`), so its gradient must show a signal if the measurement can find one.

The `window` arms test one change to B²'s sampler (`TrainerConfig.window`): only the first `window` steps after the
split are stochastic and trained, and the rest of the chain runs deterministically (DDIM, eta = 0), so the branches of
a group differ only by the noise of the steps being trained. Draws already measured (`draws_<arm>.npz`) are read back,
not measured again."""),
    nbf.v4.new_code_cell("""template = "counting"
arms = ["ddpo", "b2_first", "b2_first_window1", "b2_last_window1", "b2_first_window2", "b2_last", "ddpo_judge",
        "b2_first_judge", "ddpo_redness", "b2_last_window1_n128_redness", "b2_last_window1_n128"]
# (keys of b2lib.gradient_snr.SNR_ARMS)
draws = 40            # independent stages per arm
seed = 0              # the LoRA adapter's initialisation
run_name = "snr\"""", metadata={"tags": ["parameters"]}),
    nbf.v4.new_code_cell("""import pandas as pd

from b2lib.gradient_snr import SNR_ARMS, snr_comparisons, snr_study
from b2lib.notebook import setup
from b2lib.paths import is_smoke, results_dir
from b2lib.plots import save_figure, snr_plot

setup()
small = {}
if is_smoke():  # CI / test suite: the same code path at toy size
    arms, draws = ["ddpo", "b2_first"], 3
    small = dict(images_per_stage=4, overrides={"num_steps": 4, "split_start": 2, "num_branches": 2})
out = results_dir(run_name)
table = snr_study(out, template, {a: SNR_ARMS[a] for a in arms}, draws=draws, seed=seed, **small)
cols = ["estimator", "steps", "n_steps", "selection", "trained_samples", "snr", "snr_low", "snr_high", "cosine",
        "snr_per_image", "images_for_snr1", "seconds"]
display(table[cols].round(5))"""),
    nbf.v4.new_code_cell("""fig = snr_plot(table)
save_figure(fig, out / "snr.png")"""),
    nbf.v4.new_markdown_cell("""## B² against DDPO, per image generated (the equal-budget view)"""),
    nbf.v4.new_code_cell("""pairs = [("b2_first", "ddpo"), ("b2_last", "ddpo"), ("b2_first_judge", "ddpo_judge"),
         ("b2_first_window1", "ddpo"), ("b2_first_window1", "b2_first"), ("b2_last_window1", "b2_last"),
         ("b2_first_window2", "b2_first"), ("ddpo_redness", "ddpo"),
         ("b2_last_window1_n128_redness", "b2_last_window1_n128"), ("b2_last_window1_n128", "b2_last_window1")]
comparisons = snr_comparisons(table, pairs)
comparisons.to_csv(out / "comparisons.csv", index=False)
display(comparisons.round(6))"""),
    nbf.v4.new_code_cell("""# checks: every interval holds its estimate; the per-image view is the stage SNR over the stage's images
assert ((table["snr_low"] <= table["snr"]) & (table["snr"] <= table["snr_high"])).all()
assert ((table["snr_per_image"] - table["snr"] / table["images"]).abs() < 1e-12).all()
assert set(table["estimator"]) == set(arms) and (table["draws"] == draws).all()"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                                  "name": "python3"}})
nbf.write(nb, "notebooks/10_gradient_snr.ipynb")
