"""Evaluating in the world: is the reward a good reward, and how aligned/diverse is a model, per template."""

from __future__ import annotations

import numpy as np
import torch

from b2lib.evaluation.generate import evaluate_prompts, subset
from b2lib.world.judge import judge_batch
from b2lib.world.prompts import TEMPLATES, perturb_prompt, sample_scene, split_prompts
from b2lib.world.scenes import caption, render_batch

__all__ = [
    "reward_accuracy",
    "evaluate_templates",
    "guidance_scan",
    "best_guidance",
    "template_samples",
    "write_base_model",
    "judge_metrics",
    "judge_reward",
]


@torch.no_grad()
def reward_accuracy(reward_fn, n_per_template: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per template: mean reward of rendered scenes with their own caption and with a one-attribute-wrong caption
    (:func:`perturb_prompt`), and the pairwise accuracy ``P(r(true) > r(wrong))``. A reward that cannot tell these
    apart cannot teach alignment, whatever the RL does."""
    rng = np.random.default_rng(seed)
    out = {}
    for template in TEMPLATES:
        scenes = [sample_scene(rng, template) for _ in range(n_per_template)]
        images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
        true = [caption(s) for s in scenes]
        wrong = [perturb_prompt(c, rng) for c in true]
        r_true, r_wrong = reward_fn(images, true), reward_fn(images, wrong)
        out[template] = {
            "reward_true_caption": float(r_true.mean()),
            "reward_wrong_caption": float(r_wrong.mean()),
            "pairwise_accuracy": float((r_true > r_wrong).float().mean()),
        }
    return out


def evaluate_templates(
    pipe,
    reward,
    templates=TEMPLATES,
    split: str = "test",
    n_per_prompt: int = 4,
    max_prompts: int = 0,
    seed: int = 0,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    batch_size: int = 64,
):
    """Generate ``n_per_prompt`` images for each prompt of ``split`` of each template and score them: CLIPScore
    (``reward``, a :class:`~b2lib.rewards.base.ClipScore`), the judge, and diversity. ``max_prompts`` > 0 takes an
    evenly spaced subset of the prompts (a fixed one, so models are compared on the same prompts).

    Returns ``(summary, tables, images)``: a DataFrame with one row per template, and per template the per-image table
    and the images (prompt-major, ``n_per_prompt`` consecutive images per prompt).
    """
    import pandas as pd

    rows, tables, images = [], {}, {}
    for template in templates:
        train, test = split_prompts(template)
        prompts = subset({"train": train, "test": test}[split], max_prompts)
        table, summary, imgs = evaluate_prompts(
            pipe, prompts, reward, judge_batch, n_per_prompt, seed, num_steps, guidance_scale, eta, batch_size
        )
        rows.append({"template": template, **summary})
        tables[template], images[template] = table, imgs
    return pd.DataFrame(rows).set_index("template"), tables, images


def guidance_scan(
    pipe,
    reward,
    scales=(1.5, 2.0, 3.0, 4.0, 5.0),
    templates=TEMPLATES,
    n_per_prompt: int = 2,
    max_prompts: int = 32,
    seed: int = 0,
    num_steps: int = 20,
    eta: float = 1.0,
):
    """The judge and CLIPScore of a model at each classifier-free guidance scale, on the **train** prompts of each
    template (:func:`evaluate_templates`, the same prompts and noise at every scale). Why: the guidance that suits a
    model depends on the model (SD 1.x samples at 7.5, SD3 at 4.5 to 7, and a small model trained on few steps can be
    pushed off its data by a large one), so each world's is read from its own train split, never from the test split
    it is reported on. Returns one row per template and scale."""
    import pandas as pd

    rows = []
    for g in scales:
        summary, _, _ = evaluate_templates(
            pipe, reward, templates, "train", n_per_prompt, max_prompts, seed, num_steps, float(g), eta
        )
        rows.append(summary.reset_index().assign(guidance_scale=float(g)))
    return pd.concat(rows, ignore_index=True)


def best_guidance(scan) -> float:
    """The scale of a :func:`guidance_scan` table with the highest judge (all attributes) averaged over its templates,
    ties going to the higher CLIPScore: the rule the flow world's guidance was chosen by."""
    by_scale = scan.groupby("guidance_scale")[["judge_all_ok", "reward_mean"]].mean()
    return float(by_scale.sort_values(["judge_all_ok", "reward_mean"], ascending=False).index[0])


def template_samples(tables: dict, images: dict, per_template: int = 8) -> tuple[list, list[str]]:
    """``per_template`` images of each template, evenly spaced over its evaluation table (:func:`evaluate_templates`),
    each titled with its prompt, the judge's verdict (✓/✗) and its CLIPScore: the first look at a model, the same
    picks for every model evaluated alike. Returns ``(images, titles)`` for :func:`b2lib.reporting.plots.image_grid`."""
    show, titles = [], []
    for template, table in tables.items():
        for i in range(0, len(table), max(1, len(table) // per_template))[:per_template]:
            show.append(images[template][i])
            ok = "✓" if table.loc[i, "judge_all_ok"] else "✗"
            titles.append(f"{table.loc[i, 'prompt']}\n{ok} {table.loc[i, 'reward']:.3f}")
    return show, titles


def write_base_model(out, name: str, summary, params: dict, **extra) -> None:
    """A base model's evaluation as ``out/<name>.csv`` (one row per template) and ``out/<name>.json`` (the summary,
    every ``extra`` measurement, e.g. the judge's accuracy or the sampling speed, and the ``params`` it was made with):
    what the README and the later notebooks read a world's starting point from."""
    import json
    from pathlib import Path

    out = Path(out)
    summary.to_csv(out / f"{name}.csv")
    record = {"summary": summary.reset_index().to_dict(orient="records"), **extra, "params": params}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))


def judge_metrics(images, prompts) -> dict[str, float]:
    """The judge's alignment rate (and per-attribute rates) on a batch: a ``metric_fn`` for the trainer."""
    results = judge_batch(images, list(prompts))
    out = {"judge_all_ok": float(np.mean([r.all_ok for r in results]))}
    for attr in ("count_ok", "colour_ok", "shape_ok", "binding_ok", "relation_ok"):
        vals = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
        if vals:
            out[f"judge_{attr}"] = float(np.mean(vals))
    return out


def judge_reward(images, prompts) -> torch.Tensor:
    """A truly sparse, binary reward: 1.0 when the world's judge finds every attribute of the prompt in the image
    (count, colours, shapes, relation), else 0.0. The paper's claim is about sparse rewards; CLIPScore is dense."""
    return torch.tensor([float(r.all_ok) for r in judge_batch(images, list(prompts))])


#: The strict reward's bar on the worst object's shape fit (:attr:`~b2lib.world.judge.Detection.shape_fit`): the median,
#: over the base DDIM world's all-correct images, of their worst object's fit (128 counting train images, seed 7: 27 %
#: all-correct, 13 % of all images above this bar). So the strict reward is the binary one at about half its rate,
#: one more step along the sparsity axis, set once from the base model and never from a trained one.
STRICT_SHAPE_FIT = 0.97


def judge_graded_reward(images, prompts) -> torch.Tensor:
    """A graded reward from the same judge: the fraction of the prompt's checked attributes it finds right (count,
    colour set, shape set; binding and relation where the template has them). Denser than :func:`judge_reward`: an
    image that gets two of three right scores 2/3, not 0."""

    def graded(r) -> float:
        checks = [v for v in (r.count_ok, r.colour_ok, r.shape_ok, r.binding_ok, r.relation_ok) if v is not None]
        return float(np.mean(checks))

    return torch.tensor([graded(r) for r in judge_batch(images, list(prompts))])


def judge_strict_reward(images, prompts) -> torch.Tensor:
    """A sparser binary reward: 1.0 when the judge finds every attribute right (:func:`judge_reward`) *and* every
    object is cleanly drawn (its shape fit at least :data:`STRICT_SHAPE_FIT`), else 0.0."""

    def strict(r) -> float:
        return float(r.all_ok and min((d.shape_fit for d in r.objects), default=0.0) >= STRICT_SHAPE_FIT)

    return torch.tensor([strict(r) for r in judge_batch(images, list(prompts))])


#: The rewards of the sparsity axis by ``RunConfig.reward`` name, densest first ("clip" is the world's CLIPScore,
#: loaded with the models): graded judge, binary judge, strict binary judge.
JUDGE_REWARDS = {"judge_graded": judge_graded_reward, "judge": judge_reward, "judge_strict": judge_strict_reward}
