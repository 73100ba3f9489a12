"""Notebook 20 (the binary-reward study) as source: `python scripts/make_notebook_20.py [OUT]` writes it, unexecuted, to
`notebooks/20_binary_study.ipynb` (or OUT). Executed in full once every folder of its queue
(`scripts/binary_queue.py`) is in, it only reads them."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = []
cells.append(
    md("""# 20 · Learning from a binary reward: branch where the group can disagree, at the budget the census asks for

This project's own extension, not the paper's claim: a reward **sparse in value** (the world judge's pass/fail on
every attribute of the prompt, `reward="judge"`), where the paper's reward is sparse in time. Notebooks 16–18 found
why B² learned nothing from it: its siblings, branched 10 steps before the end, pass or fail together (rho 0.85–1.00),
so 6–12 % of its branch groups carry a comparison; branched at x_T, rho is ~0.25 and about half do. Independent samples
of one prompt (a GRPO-style group, DDPO's per-prompt draws) disagree with probability 1 − p^B − (1 − p)^B.

The arms, each a configuration of one trainer (`b2lib.experiments.presets.method_config`), under the coarse recipe:

* **ddpo**: DDPO, its group size (images of one prompt per stage, compared by its per-prompt normaliser) and lr
  searched;
* **grpo**: a GRPO-style group of independent samples per prompt on the DDIM policy (the flow-GRPO family's
  grouping), its group size and lr searched;
* **b2**: B² as the main job runs it (its point there, not searched again), branched first 10 steps before the end;
* **b2_signal**: the same B² with its branch point chosen by the signal (`TrainerConfig.branch_target`): one step
  earlier whenever fewer than half of the last two stages' branch groups carried a comparison, never later than the
  backward schedule;
* **tree**: B²'s depth-2 tree, split first at x_T (`[[0, 2], [10, 2]]`), at B²'s point.

**The budget, computed before any run** (`b2lib.studies.binary.study_budget`): the fewest stages at which the
signal-chosen B², at B²'s UNet work, expects as many informative groups as the dense-reward main job saw (8 per stage
× 120 stages), its expected share at each depth read from the base model's census taken with the study's own sampler
(notebook 16's census sampled the published recipe). Every other method runs the stages of the same UNet work
(`budget="compute"`). Then 5 seeds, 512 paired test images (judge, CLIPScore, BERTScore), health and the per-stage
census of every run, and the **sign control**: the signal-chosen B² trained on the negated binary reward, 5 seeds.

Every run is one folder (`results/binary_study/<method>_seed<k>`, its own base-model evaluation beside it on the same
prompts and noise as every other folder's). `b2lib.studies.binary.BinaryStudy` builds the runs from the parameters
below, and `scripts/binary_queue.py` drains the same runs outside the notebook, one committed folder at a time; a
finished folder is read here, not run again. The LoRAs load in stock `StableDiffusionPipeline` with
`load_lora_weights` from `results/binary_study/<method>_seed<k>/<method>_seed<k>/lora` (sign control:
`results/binary_study/negated/...`).""")
)
params = code("""template = "counting"
reward = "judge"               # the judge's binary all-correct reward
methods = ["ddpo", "grpo", "b2", "b2_signal", "tree"]
seeds = [0, 1, 2, 3, 4]
stages = 0                     # B²'s stages; 0: computed from the census (kept in budget.json)
search_stages = 60             # B²'s stages of UNet work in the baselines' search
search_seeds = [0]
search_eval_images = 128       # train-split images per model in the search
recipe = "coarse"
budget_rule = "compute"        # every other method runs the stages of B²'s UNet work
tree = [[0, 2], [10, 2]]       # the tree arm's levels: [branch_at, branches] (0 = x_T)
search = {                     # each baseline's points, chosen on the train-split binary reward
    "ddpo": [{"samples_per_prompt": k, "lr": lr} for k in (4, 8) for lr in (3e-5, 1e-4, 3e-4, 1e-3)],
    "grpo": [{"num_branches": k, "lr": lr} for k in (4, 8) for lr in (3e-5, 1e-4, 3e-4, 1e-3)],
}
baseline_fields = {"grad_accum": 1, "timestep_fraction": 0.25}   # the main job's DDPO point
b2_fields = {"grad_accum": 1, "lr": 1e-4}                        # the main job's B² point
signal_target = 0.5            # b2_signal: deepen while fewer than this share of groups carry a comparison
eval_images = 0                # test images per model (0: the preset's, 512)
census = "results/binary_study/census/census_prediction.csv"   # the base model's census under the recipe
census_depths = [10, 12, 14, 16, 18, 20]   # its branch points (trained steps)
census_draws = 12              # its stages of train prompts per branch point
reference = "results/main"     # the dense-reward run whose informative groups the budget matches
sign_method = "b2_signal"
sign_seeds = [0, 1, 2, 3, 4]
preset = "embedded"
run_name = "binary_study"
workers = 2                    # run folders in parallel (separate processes, cores // workers threads each)""")
params.metadata["tags"] = ["parameters"]
cells.append(params)
cells.append(
    code("""from b2lib.notebook import setup

smoke = setup(globals(), preset="smoke", stages=2, search_stages=2, search_eval_images=4, tree=[[0, 2], [2, 2]],
              search={"ddpo": [{"samples_per_prompt": 4, "lr": 1e-3}], "grpo": [{"num_branches": 4, "lr": 1e-3}]},
              sign_seeds=[0])
import dataclasses
import json
from pathlib import Path

import pandas as pd

from b2lib.experiments.experiment import run_many
from b2lib.studies.binary import BinaryStudy, informative_seen
from b2lib.utils.paths import REPO_ROOT, results_dir

# every parameter above that is a field of BinaryStudy, resolved once here and handed down
fields = {f.name for f in dataclasses.fields(BinaryStudy)} - {"out"}
study = BinaryStudy(out=results_dir(run_name), **{k: v for k, v in globals().items() if k in fields})
print(study)""")
)
cells.append(
    md("""## 1 · The census under the study's recipe, then the budget

The base model's branch groups at each branch point, sampled as the study's B² samples them (the coarse recipe: only
the branch step explores, the rest of the chain is deterministic), scored by the binary reward: the success rate `p`,
the siblings' correlation `rho`, the informative share they predict and the one measured. From it, the signal-chosen
B²'s expected path (trained steps per stage) and informative groups against the main job's, and what B² as the main
job runs it would expect at the same stages.""")
)
cells.append(
    code("""if not study.stages:  # the smoke run sets its stages: its 4-step chain has no such branch points
    display(study.measure_census().round(3))
budget = study.budget(root=REPO_ROOT) if not study.stages else {"stages": study.stages}
print(json.dumps(budget, indent=1))""")
)
cells.append(
    md("""## 2 · Each baseline's search: group size × learning rate

B²'s `search_stages` stages of UNet work per run, `search_eval_images` train-split images per model. The choice is
the point with the largest train-split gain of the binary reward over the base model (same images, same noise). Then
the check before the study: does the chosen point move the policy (approx KL above `MOVED_KL`) with a train reward
rising beyond its stage-to-stage noise?""")
)
cells.append(
    code("""from b2lib.studies.flow import moved

run_many([cfg for _, cfg in study.search_runs()], workers=workers)
search_table = study.search_results()
choice = study.write_choice()
cols = ["method", "point", "seed", "gain", "clip_gain", "informative_per_stage", "groups_per_stage", "stages",
        "optimizer_steps", "mean_approx_kl", "rise_over_noise", "train_s"]
display(search_table[cols].round(5))
print(json.dumps(choice, indent=1))
display(moved(search_table, choice))""")
)
cells.append(md("## 3 · The study: every arm at its point, one folder per method and seed"))
cells.append(
    code("""configs = study.study_configs(choice)
folders = run_many(configs, workers=workers)""")
)
cells.append(
    md("""### Each arm − base, B²'s arms − each baseline, between B²'s arms (paired two-level bootstrap, 95 %)""")
)
cells.append(
    code("""from b2lib.reporting.plots import interval_plot, save_figure, training_curves
from b2lib.reporting.report import combine_metrics, combine_runs, health_table, paired_comparisons, run_cost
from b2lib.utils.tables import write_table

per_image = combine_runs(folders)  # checks that every folder's base images are the same images
metrics = combine_metrics(folders)
b2_arms = [m for m in methods if m in ("b2", "b2_signal", "tree")]
baselines = [m for m in methods if m not in b2_arms]
pairs = [(m, "base") for m in methods] + [(a, b) for a in b2_arms for b in baselines]
pairs += [(a, b) for a, b in (("b2_signal", "b2"), ("tree", "b2_signal")) if a in methods and b in methods]
comparisons = paired_comparisons(per_image, ("test",), pairs)
write_table(comparisons, study.out, "binary_comparisons")
display(comparisons[["metric", "a", "b", "diff", "low", "high", "seeds_a", "images", "verdict"]].round(4))
fig = interval_plot(comparisons)
save_figure(fig, study.out / "intervals.png")""")
)
cells.append(
    md("""### Cost: images and UNet rows per run (means over seeds), and the curves

`unet_rows` counts sampling and training forwards of the UNet (a guided step counts 2). A binary reward's stage mean
scatters by ±0.1 from stage to stage, so each run's curve is its mean over the last 25 stages.""")
)
cells.append(
    code("""cost = run_cost(metrics)
cost.to_csv(study.out / "cost.csv")
display(cost.round(1))
x_labels = {"images_seen": "images generated", "unet_rows_seen": "UNet rows (sampling + update forwards)"}
for x, x_label in x_labels.items():
    fig = training_curves(metrics, ["reward_mean"], x=x, x_label=x_label, smooth=25)
    save_figure(fig, study.out / f"curves_{x}.png")""")
)
cells.append(md("### Training health (means over stages and seeds; largest values per method)"))
cells.append(
    code("""health = health_table(metrics)
health.to_csv(study.out / "health.csv")
health.round(6)""")
)
cells.append(
    md("""## 4 · The census: informative groups per stage and per run

Per method, the stage log's groups (B²'s branch groups, the tree's sibling sets, a prompt's samples of one stage
under the baselines), the informative ones (members disagree) and the flat ones; per run, the informative groups seen
against the budget's expectation; and B²'s measured share at each branch point against the share the base model's
census predicts.""")
)
cells.append(
    code("""from b2lib.studies.levers import census_by_branch_point, census_plot, stage_census

census_table = stage_census(metrics)
census_table.to_csv(study.out / "census.csv", index=False)
display(census_table.round(3))
seen = informative_seen(metrics)
seen.to_csv(study.out / "informative_seen.csv", index=False)
display(seen.round(2))
prediction_file = REPO_ROOT / census
prediction = pd.read_csv(prediction_file) if prediction_file.is_file() else None
by_point = census_by_branch_point(metrics[metrics["method"].isin(["b2", "b2_signal"])], prediction, reward)
by_point.to_csv(study.out / "census_by_branch_point.csv", index=False)
fig = census_plot(by_point)
save_figure(fig, study.out / "census.png")""")
)
cells.append(
    md("""## 5 · The sign control: the signal-chosen B² trained on the negated binary reward

The same runs with the reward's sign flipped, evaluated on the real reward and the same images. Per image,
`signal` = (r(+) − r(−)) / 2 flips with the reward's sign (learned); `drift` = (r(+) + r(−)) / 2 − r(base) does not.""")
)
cells.append(
    code("""from b2lib.evaluation.comparisons import sign_control

run_many(study.sign_configs(choice), workers=workers)
signs = sign_control(study.sign_pairs(), split="test", metrics=("judge_all_ok", "reward"))
signs.to_csv(study.out / "sign_control.csv", index=False)
signs.round(4)""")
)
cells.append(
    md("""## Reading (computed from the tables above)

The goals set for this study: some B² arm above the base model on the test judge, with the sign control resolved in
the other direction; that arm at least as good as the better baseline at equal UNet work, resolved where it is
ahead.""")
)
cells.append(
    code("""from b2lib.studies.binary import goal_table

goals = goal_table(comparisons, signs, b2_arms, baselines)
goals.to_csv(study.out / "goals.csv", index=False)
goals.round(4)""")
)
cells.append(
    md("""## 6 · Gain against reward sparsity, with this study's column

Notebook 18's axis (each method trained on rewards of one judge at the main job's budget, 5 seeds) and, beside its
binary column, this study's arms trained on the same binary reward at the census's budget.""")
)
cells.append(
    code("""from b2lib.studies.binary import sparsity_with_study
from b2lib.studies.sparsity import sparsity_plot

axis_file = REPO_ROOT / "results" / "sparse_axis" / "gain.csv"
if axis_file.is_file():
    gain = sparsity_with_study(pd.read_csv(axis_file), comparisons, reward=reward)
    gain.to_csv(study.out / "gain_vs_sparsity.csv", index=False)
    fig = sparsity_plot(gain)
    save_figure(fig, study.out / "gain_vs_sparsity.png")
    display(gain.round(4))
else:
    print(f"{axis_file} is missing: run notebook 18 for the sparsity axis")""")
)
cells.append(
    code("""# checks: every method has every seed, intervals hold their means, LoRAs written for the evaluation to load
assert metrics.groupby("method").seed.nunique().eq(len(seeds)).all()
assert ((comparisons["low"] <= comparisons["diff"]) & (comparisons["diff"] <= comparisons["high"])).all()
assert all((f / f"{c.methods[0]}_seed{c.seeds[0]}" / "lora").is_dir() for f, c in zip(map(Path, folders), configs))
assert set(signs["method"]) == {study.sign_method} and (signs["seeds"] == len(study.sign_seeds)).all()""")
)
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
if __name__ == "__main__":
    import sys
    from pathlib import Path

    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "notebooks" / "20_binary_study.ipynb"
    )
    nbf.write(nb, out)
    print(out)
