"""Writes notebooks/09_learning_vs_drift.ipynb (the cells are the notebook; this script keeps them reviewable)."""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell("""# 09 · Learning or drift? The sign control, and what more images per stage do

A fine-tuned model can score below the base model for two different reasons: the update does not follow the reward,
or it follows it but also *damages* the model in a way that does not depend on the reward (the weights wandering
under noisy gradients). The **sign control** tells them apart: train each method's tuned recipe once on the reward
and once on its negation (`RunConfig.reward_sign=-1`), same seeds, and evaluate both on the same images with the real
reward. Per image, `signal = (r(+) - r(-)) / 2` flips with the reward's sign (learning); `drift = (r(+) + r(-)) / 2 -
r(base)` does not (damage); `gain = signal + drift`. Intervals: two-level bootstrap over seed pairs and prompts.

The second part reads the budget study: the same recipes with 4x and 16x the images per stage (so 4-16x the optimizer
steps), and with 4x the images *and* 4x the samples per optimizer step (the same number of steps, each on a
less noisy gradient). Where a run was made on a GPU machine its `device` column says so."""),
    nbf.v4.new_code_cell("""template = "counting"
methods = ["ddpo", "b2"]
seeds = [0, 1]
eval_images = 512      # train-split evaluation: every train prompt x 16, the same noise for every model
device = ""            # "": the CPU; "cuda" on a GPU machine
workers = 1
run_name = "signal"
run_budget = False     # also run the missing budget-study runs (hours on 2 CPU cores; minutes on a GPU)""",
                      metadata={"tags": ["parameters"]}),
    nbf.v4.new_code_cell("""from pathlib import Path

import pandas as pd

from b2lib.experiment import run_many
from b2lib.notebook import setup
from b2lib.paths import is_smoke, results_dir
from b2lib.plots import save_figure, sign_control_plot, training_curves
from b2lib.report import run_table, sign_control
from b2lib.studies import budget_runs, sign_control_runs

setup()
small = {}
if is_smoke():  # CI / test suite: the same code path at toy size
    seeds, eval_images, workers = [0], 4, 1
    small = dict(stages=2, images_per_stage=8, branches=2, eval_max_prompts=2,
                 overrides={"num_steps": 4, "split_start": 2})
out = results_dir(run_name)
common = dict(template=template, eval_images=eval_images, eval_splits=("train",), bertscore=False, save_lora=False,
              grid_prompts=0, device=device, **small)
signs = sign_control_runs(out, methods, seeds, **common)
run_many(signs, workers=workers)
table = sign_control([c.output_dir for c in signs])
table.to_csv(out / "sign_control.csv", index=False)
display(table.round(4))"""),
    nbf.v4.new_code_cell("""fig = sign_control_plot(table)
save_figure(fig, out / "sign_control.png")"""),
    nbf.v4.new_markdown_cell("""## Budget: more images per stage, with and without larger optimizer steps"""),
    nbf.v4.new_code_cell("""budget = budget_runs(out, methods, seeds, **{**common, "images_per_stage": 4} if is_smoke() else common)
if is_smoke():
    budget = budget[:2]
if run_budget or is_smoke():
    run_many(budget, workers=workers)
done = [Path(c.output_dir) for c in budget if (Path(c.output_dir) / "summary.json").exists()]
runs = run_table(done + [Path(c.output_dir) for c in signs])
runs.to_csv(out / "runs.csv", index=False)
cols = ["study", "run", "device", "images_per_stage", "overrides", "reward_sign", "gain", "gain_low", "gain_high",
        "judge_gain", "optimizer_steps", "mean_approx_kl", "mean_clipfrac", "mean_rel_update", "reward_first5",
        "reward_last5"]
display(runs[cols].round(4))"""),
    nbf.v4.new_code_cell("""metrics = []
for d in done:
    m = pd.read_csv(d / "metrics.csv")
    m["run"] = f"{d.parent.name}: {m['method'].iloc[0]}, {m['images'].iloc[0]}/stage"
    metrics.append(m)
if metrics:
    metrics = pd.concat(metrics, ignore_index=True)
    fig = training_curves(metrics, ["reward_mean", "approx_kl", "rel_update"], x="stage", hue="run")
    save_figure(fig, out / "budget_curves.png")"""),
    nbf.v4.new_code_cell("""# checks: the decomposition adds up, every interval holds its estimate
assert ((table["gain"] - table["signal"] - table["drift"]).abs() < 1e-9).all()
for part in ("gain", "signal", "drift"):
    assert ((table[f"{part}_low"] <= table[part]) & (table[part] <= table[f"{part}_high"])).all()
assert set(table["method"]) == set(methods) and (table["seeds"] == len(seeds)).all()"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                                  "name": "python3"}})
nbf.write(nb, "notebooks/09_learning_vs_drift.ipynb")
