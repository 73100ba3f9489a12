"""The binary-reward study as data: which methods run, how the baselines are searched, how long the runs must be, and
where each run's folder lies, so notebook 20 and the queue that drains the runs (``scripts/binary_queue.py``) build
the very same runs (a finished folder is skipped only if its fingerprint matches).

Why this study: under a pass/fail reward a group of samples carries a comparison only if its members disagree
(:mod:`b2lib.studies.sparsity`). B²'s siblings branched late mostly agree, so most of its groups are flat; independent
samples of one prompt (a GRPO-style group, DDPO's per-prompt draws) disagree far more often. The study gives each side
its best chance: the baselines search their group size and learning rate on the train-split binary reward; B² runs at
the main job's point, as it is, with its branch point chosen by the signal
(:class:`~b2lib.algorithm.schedule.SignalChosenBranchPoint`), and as a tree whose first split is at x_T; and every run
is long enough, computed from the base model's census before running (:func:`study_budget`), that the signal-chosen B²
sees as many informative groups as the dense-reward main job saw.

Why a queue of small folders: the study needs many hours of CPU. Each folder is one method at one seed, with its own
evaluation of the base model beside it on the same prompts and noise as every other folder's, so an interrupted study
loses at most the runs in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from b2lib.experiments.experiment import RunConfig
from b2lib.experiments.presets import SIGNAL_TARGET
from b2lib.studies.levers import choose_levers, chosen_overrides, lever_table, point_tag
from b2lib.studies.sparsity import gain_vs_sparsity
from b2lib.studies.tuning import finished_sign_pairs, search_config, with_reward_trend
from b2lib.training.config import TrainerConfig

__all__ = [
    "BINARY_METHODS",
    "BASELINE_FIELDS",
    "B2_FIELDS",
    "SEARCH",
    "BinaryStudy",
    "share_by_depth",
    "expected_path",
    "expected_informative",
    "study_budget",
    "informative_seen",
    "goal_table",
    "sparsity_with_study",
]

#: The study's methods: DDPO and a GRPO-style group of independent samples per prompt (each searched), B² as the main
#: job runs it, B² with its branch point chosen by the signal, and B²'s depth-2 tree split first at x_T.
BINARY_METHODS = ("ddpo", "grpo", "b2", "b2_signal", "tree")

#: The baselines' fields outside the search: DDPO's point of the main job (the coarse recipe's search chose one
#: optimizer step per micro-batch group and a quarter of the chain's steps per sample); the GRPO-style group, another
#: plain sampler trained on every step of the chain, gets the same. A test keeps them equal to the main job's record.
BASELINE_FIELDS: dict = {"grad_accum": 1, "timestep_fraction": 0.25}

#: B²'s fields, shared by its three arms: the main job's point, not searched again on the binary reward.
B2_FIELDS: dict = {"grad_accum": 1, "lr": 1e-4}

_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
#: Each baseline's search: its group size (DDPO: samples of one prompt per stage, compared by its per-prompt
#: normaliser; GRPO-style: the group's size, ``num_branches`` being the size of a method's group) x learning rate,
#: 8 points each, chosen on the train-split binary reward. 3e-5 was added after the first 12 points had run: every
#: DDPO point lost judge accuracy on the train split, more the higher its learning rate, as did GRPO's above 3e-4.
SEARCH: dict[str, list[dict]] = {
    "ddpo": [{"samples_per_prompt": k, "lr": lr} for k in (4, 8) for lr in _LRS],
    "grpo": [{"num_branches": k, "lr": lr} for k in (4, 8) for lr in _LRS],
}


def share_by_depth(prediction: pd.DataFrame, reward: str = "judge", branches: int = 4) -> Callable[[int], float]:
    """The base model's predicted informative share of a ``branches``-branch group against the trained steps it was
    branched at (notebook 16's ``census_prediction.csv``: from ``p`` and ``rho`` measured at a late and at x_T's branch
    point), linear between the measured depths and constant beyond them."""
    rows = prediction[(prediction["reward"] == reward) & (prediction["B"] == branches)].sort_values("trained_steps")
    if rows.empty:
        raise ValueError(f"the census has no prediction for reward {reward!r} at {branches} branches.")
    x, y = rows["trained_steps"].to_numpy(float), rows["predicted"].to_numpy(float)
    return lambda steps: float(np.interp(steps, x, y))


def expected_path(cfg: TrainerConfig, share: Callable[[int], float]) -> list[int]:
    """The trained steps of every stage of ``cfg`` when each stage's groups are informative at the expected ``share``
    of their depth: the backward schedule itself, or the path its signal-chosen branch point takes."""
    chooser = cfg.signal_branching
    if chooser is None:
        return list(cfg.schedule.trained_steps)
    history: list[tuple[int, float]] = []
    for stage in range(cfg.num_stages):
        steps = chooser(stage, history)
        history.append((steps, share(steps)))
    return [steps for steps, _ in history]


def expected_informative(cfg: TrainerConfig, share: Callable[[int], float]) -> float:
    """Informative branch groups a B² run of ``cfg`` is expected to see over its stages: groups per stage (its
    prompts) x the expected share at each stage's depth."""
    return float(sum(cfg.prompts_per_stage * share(s) for s in expected_path(cfg, share)))


def study_budget(
    run: Callable[[int], RunConfig],
    share: Callable[[int], float],
    reference_groups: float,
    method: str = "b2_signal",
    step: int = 10,
    most: int = 2000,
) -> dict:
    """The fewest B² stages (``RunConfig.stages``, a multiple of ``step``) at which ``method``, run at B²'s compute
    (``run(stages)``: the study's folder of ``method``), expects at least ``reference_groups`` informative groups, with
    what B² as the main job runs it expects at those stages. Why: a flat group trains nothing, so the informative groups
    seen are the update's real sample size; matching the dense-reward run's is the least budget at which its gain could
    be expected (:func:`b2lib.studies.levers.stages_for_signal`, here with the schedule's own path)."""
    for stages in range(step, most + 1, step):
        cfg = run(stages).trainer_config(method, 0)
        got = expected_informative(cfg, share)
        if got >= reference_groups:
            b2 = replace(run(stages), methods=("b2",)).trainer_config("b2", 0)
            return {
                "stages": stages,
                "method": method,
                "method_stages": cfg.num_stages,
                "expected_informative": got,
                "reference_groups": reference_groups,
                "b2_expected_informative": expected_informative(b2, share),
                "path_start": expected_path(cfg, share)[:24],
            }
    raise ValueError(f"{method} does not reach {reference_groups} informative groups within {most} stages.")


def informative_seen(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, the informative groups a run saw over its stages (groups whose members did not all get one
    reward), its stages and its mean informative share, as mean and range over seeds: what the budget expected, read
    from the runs' own stage logs (methods without groups of two or more are left out)."""
    m = metrics[(metrics["groups"] > 0) & (metrics["images"] >= 2 * metrics["groups"])]
    m = m.assign(informative=m["groups"] - m["flat_groups"])
    per_run = m.groupby(["method", "seed"]).agg(
        stages=("stage", "size"), informative=("informative", "sum"), groups=("groups", "sum")
    )
    per_run["share"] = per_run["informative"] / per_run["groups"]
    out = per_run.groupby("method").agg(
        seeds=("stages", "size"),
        stages=("stages", "mean"),
        informative=("informative", "mean"),
        informative_min=("informative", "min"),
        informative_max=("informative", "max"),
        share=("share", "mean"),
    )
    return out.reset_index()


def _row(comparisons: pd.DataFrame, a: str, b: str, metric: str) -> pd.Series | None:
    hit = comparisons[(comparisons["metric"] == metric) & (comparisons["a"] == a) & (comparisons["b"] == b)]
    if "split" in hit:
        hit = hit[hit["split"] == "test"]
    return None if hit.empty else hit.iloc[0]


def goal_table(
    comparisons: pd.DataFrame,
    signs: pd.DataFrame | None,
    arms=("b2", "b2_signal", "tree"),
    baselines=("ddpo", "grpo"),
    metric: str = "judge_all_ok",
) -> pd.DataFrame:
    """The study's goals, read off the paired test comparisons and the sign control, one row per B² arm and goal:
    ``above base`` (the arm − base, interval above 0), ``sign control`` (the negated run's ``signal`` on ``metric``,
    interval above 0: the gain flips with the reward's sign; only for the arm that has one), and ``vs <baseline>``
    against the better baseline (the higher test ``metric``: the harder comparison), ``met`` when the interval does not
    fall below 0 (at least as good) and ``ahead`` when it lies above it."""
    means = {b: float(r["mean_a"]) for b in baselines if (r := _row(comparisons, b, "base", metric)) is not None}
    best = max(means, key=means.get) if means else None
    rows = []
    for arm in arms:
        r = _row(comparisons, arm, "base", metric)
        if r is not None:
            rows.append(dict(arm=arm, goal="above base", diff=r["diff"], low=r["low"], high=r["high"],
                             met=bool(r["low"] > 0), ahead=bool(r["low"] > 0)))  # fmt: skip
        sign = None if signs is None else signs[(signs["method"] == arm) & (signs["metric"] == metric)]
        if sign is not None and len(sign):
            g = sign.iloc[0]
            resolved = bool(g["signal_low"] > 0)
            rows.append(dict(arm=arm, goal="sign control: signal", diff=g["signal"], low=g["signal_low"],
                             high=g["signal_high"], met=resolved, ahead=resolved))  # fmt: skip
        r = _row(comparisons, arm, best, metric) if best else None
        if r is not None:
            rows.append(dict(arm=arm, goal=f"vs {best} (the better baseline)", diff=r["diff"], low=r["low"],
                             high=r["high"], met=bool(r["high"] >= 0), ahead=bool(r["low"] > 0)))  # fmt: skip
    return pd.DataFrame(rows, columns=["arm", "goal", "diff", "low", "high", "met", "ahead"])


def sparsity_with_study(
    axis_gain: pd.DataFrame,
    comparisons: pd.DataFrame,
    reward: str = "judge",
    label: str = "judge, census budget",
    metric: str = "judge_all_ok",
) -> pd.DataFrame:
    """The sparsity axis's gains over base (notebook 18's ``gain.csv``, at the main job's budget) with one more column:
    this study's arms − base on ``metric``, trained on ``reward`` at the census's budget, named ``label`` and placed at
    ``reward``'s positive rate. Why one figure: the axis showed B²'s gain vanish as the reward gets sparser at the main
    budget; this column shows what the longer, census-sized budget and the group-relative baselines do at the same
    sparsity."""
    axis = axis_gain[axis_gain["metric"] == metric]
    rate = axis.loc[axis["reward"] == reward, "positive_rate"]
    if rate.empty:
        raise ValueError(f"the axis table has no {metric!r} row for reward {reward!r}; run notebook 18 first")
    rates = pd.DataFrame({"reward": [label], "positive_rate": [float(rate.iloc[0])]})
    study = gain_vs_sparsity({label: comparisons}, rates, metric=metric).assign(metric=metric)
    return pd.concat([axis, study], ignore_index=True)


@dataclass
class BinaryStudy:
    """Notebook 20's parameters, turned into runs. ``stages``: B²'s in the study (every other method runs the stages of
    the same UNet work, ``budget="compute"``); 0 = :meth:`budget`'s, computed once from the census and kept in
    ``out/budget.json``. ``search_stages``: B²'s in the baselines' search. ``tree``: the tree arm's levels
    (``[branch_at, branches]``, 0 = x_T), one stored step per node."""

    out: Path
    run_name: str = "binary_study"
    template: str = "counting"
    reward: str = "judge"
    methods: tuple[str, ...] = BINARY_METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    stages: int = 0
    search_stages: int = 60
    search_seeds: tuple[int, ...] = (0,)
    search_eval_images: int = 128
    recipe: str = "coarse"
    budget_rule: str = "compute"
    tree: list = field(default_factory=lambda: [[0, 2], [10, 2]])
    search: dict = field(default_factory=lambda: {m: [dict(p) for p in ps] for m, ps in SEARCH.items()})
    baseline_fields: dict = field(default_factory=lambda: dict(BASELINE_FIELDS))
    b2_fields: dict = field(default_factory=lambda: dict(B2_FIELDS))
    signal_target: float = SIGNAL_TARGET
    eval_images: int = 0
    #: the base model's census under the study's recipe (:meth:`measure_census`, its prediction file) and the
    #: dense-reward run (the main job) the budget is computed from; the census's depths (trained steps) and draws
    census: str = "results/binary_study/census/census_prediction.csv"
    reference: str = "results/main"
    census_depths: tuple[int, ...] = (10, 12, 14, 16, 18, 20)
    census_draws: int = 12
    #: the sign control: ``sign_method`` (the winning B² arm) trained on the negated reward, at these seeds
    sign_method: str = "b2_signal"
    sign_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    preset: str = "embedded"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.methods, self.seeds, self.search_seeds = tuple(self.methods), tuple(self.seeds), tuple(self.search_seeds)
        self.sign_seeds, self.census_depths = tuple(self.sign_seeds), tuple(self.census_depths)
        unknown = set(self.search) - set(self.methods)
        if unknown:
            raise ValueError(f"search names methods {sorted(unknown)} outside the study's {self.methods}.")

    # ------------------------------------------------------------------------------------------------- the arms
    def fields(self, method: str) -> dict:
        """``method``'s own fields outside the search: the baselines', or B²'s (with the tree's levels and the
        signal's target)."""
        if method in self.search:
            return dict(self.baseline_fields)
        own = dict(self.b2_fields)
        if method == "tree":
            own.update(tree=self.tree, window=1)
        if method == "b2_signal":
            own["branch_target"] = self.signal_target
        return own

    def _base(self, stages: int, method: str, **kw) -> RunConfig:
        fields = dict(
            preset=self.preset,
            template=self.template,
            reward=self.reward,
            methods=(method,),
            stages=stages,
            budget=self.budget_rule,
            recipe=self.recipe,
            eval_images=self.eval_images,
            method_overrides={method: self.fields(method)},
        )
        return RunConfig(**{**fields, **kw})

    # ------------------------------------------------------------------------------------------------ the search
    def search_runs(self) -> list[tuple[dict, RunConfig]]:
        """``(grid point, RunConfig)`` of every searched method x point x search seed, in ``out/search``: the point
        laid over the method's own fields (B²'s reference work for the equal compute stays the same for every
        point), evaluated on the train split's binary reward."""
        runs = []
        for m, points in self.search.items():
            for point in points:
                for s in self.search_seeds:
                    base = self._base(self.search_stages, m, eval_images=self.search_eval_images)
                    folder = self.out / "search" / f"{m}_{point_tag(point)}_seed{s}"
                    cfg = search_config(base, m, s, {}, folder)
                    runs.append((point, replace(cfg, method_overrides={m: {**self.fields(m), **point}})))
        return runs

    def search_results(self) -> pd.DataFrame:
        """:func:`~b2lib.studies.levers.lever_table` of the search's finished runs (gain on the trained binary
        reward, census, health), with each run's train-reward rise over its stages against its stage-to-stage noise
        (:func:`~b2lib.evaluation.health.reward_trend`): what the check that the chosen points move reads
        (:func:`b2lib.studies.flow.moved`)."""
        done = [(p, c) for p, c in self.search_runs() if (Path(c.output_dir) / "summary.json").is_file()]
        return with_reward_trend(lever_table(done), done)

    def choose(self, table: pd.DataFrame | None = None) -> dict[str, dict]:
        """Each searched method's point with the highest train-split gain (:func:`~b2lib.studies.levers.choose_levers`),
        as the fields it runs with in the study."""
        table = self.search_results() if table is None else table
        return chosen_overrides(choose_levers(table), self.search)

    def write_choice(self) -> dict[str, dict]:
        """The search's table (``search/search.csv``), its ranking (``search/choice.csv``) and the choice
        (``search/choice.json``): what the study's folders read."""
        table = self.search_results()
        folder = self.out / "search"
        table.to_csv(folder / "search.csv", index=False)
        choose_levers(table).to_csv(folder / "choice.csv", index=False)
        choice = self.choose(table)
        (folder / "choice.json").write_text(json.dumps(choice, indent=2))
        return choice

    def read_choice(self) -> dict[str, dict]:
        path = self.out / "search" / "choice.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the search first (scripts/binary_queue.py search).")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------------------------------------ the budget
    def measure_census(self) -> pd.DataFrame:
        """The base model's branch groups under the study's recipe, at each of :attr:`census_depths` (B²'s branches,
        the preset's images per stage, :attr:`census_draws` stages of train prompts each):
        :func:`b2lib.studies.sparsity.census_study`, kept in ``out/census`` (``census.csv``, ``census_prediction.csv``)
        and read from there once measured. Why not notebook 16's census: that one sampled every step after the branch
        point stochastically (the published recipe); the coarse recipe explores only the branch step, so its siblings
        may agree more, and the budget must be computed for the sampler the study runs."""
        folder = self.out / "census"
        path = folder / "census_prediction.csv"
        if path.is_file():
            return pd.read_csv(path)
        from b2lib.experiments.presets import load_prompts
        from b2lib.studies.sparsity import census_study

        cfg = self._base(1, "b2").trainer_config("b2", 0)
        census, prediction = census_study(
            load_prompts(self.preset, self.template, "train"),
            [cfg.num_branches],
            cfg.images_per_stage,
            self.census_draws,
            preset=self.preset,
            recipe=self.recipe,
            depths=self.census_depths,
        )
        folder.mkdir(parents=True, exist_ok=True)
        census.to_csv(folder / "census.csv", index=False)
        prediction.to_csv(path, index=False)
        return prediction

    def budget(self, root: str | Path = ".") -> dict:
        """The study's stages from the census (:func:`study_budget` for the signal-chosen B² against the main job's
        groups), computed once and kept in ``out/budget.json`` (then read: the runs' settings never move)."""
        path = self.out / "budget.json"
        if path.is_file():
            return json.loads(path.read_text())
        root = Path(root)
        share = share_by_depth(pd.read_csv(root / self.census), self.reward, self._branches())
        ref = json.loads((root / self.reference / "run.json").read_text())["settings"]["trainer"]["b2_seed0"]
        groups = ref["prompts_per_stage"] * ref["num_stages"]  # a dense reward: every group informative
        result = study_budget(lambda n: self._base(n, "b2_signal"), share, groups)
        result.update(census=self.census, reference=self.reference, reward=self.reward, target=self.signal_target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        return result

    def _branches(self) -> int:
        return self._base(1, "b2").trainer_config("b2", 0).num_branches

    def study_stages(self) -> int:
        return self.stages or int(self.budget()["stages"])

    # ------------------------------------------------------------------------------------------------- the study
    def study_configs(self, choice: dict[str, dict] | None = None) -> list[RunConfig]:
        """One run per method and seed, the baselines at their chosen points (``choice``: :meth:`choose`), seeds
        outermost (a seed's methods land together), each in ``out/<method>_seed<k>`` with its LoRA: 512 paired test
        images, the base model's beside them, the judge, CLIPScore and BERTScore."""
        choice = self.read_choice() if choice is None else choice
        stages = self.study_stages()
        configs = []
        for s in self.seeds:
            for m in self.methods:
                cfg = self._base(stages, m, seeds=(s,), output_dir=str(self.out / f"{m}_seed{s}"))
                configs.append(replace(cfg, method_overrides={m: {**self.fields(m), **choice.get(m, {})}}))
        return configs

    def sign_configs(self, choice: dict[str, dict] | None = None) -> list[RunConfig]:
        """The sign control: :attr:`sign_method` trained on the negated binary reward (``reward_sign=-1``), one folder
        per seed in ``out/negated/<method>_seed<k>``, otherwise the study's run of the same seed."""
        twins = {c.output_dir: c for c in self.study_configs(choice)}
        return [
            replace(
                twins[str(self.out / f"{self.sign_method}_seed{s}")],
                reward_sign=-1,
                output_dir=str(self.out / "negated" / f"{self.sign_method}_seed{s}"),
            )
            for s in self.sign_seeds
        ]

    def sign_pairs(self) -> list[Path]:
        """Each finished negated run and the study's run of the same seed (what
        :func:`~b2lib.evaluation.comparisons.sign_control` reads)."""
        return finished_sign_pairs(self.out, self.sign_method, self.sign_seeds)

    def finished(self) -> list[Path]:
        """The study's finished folders (those with a ``summary.json``)."""
        return [self.out / f"{m}_seed{s}" for s in self.seeds for m in self.methods
                if (self.out / f"{m}_seed{s}" / "summary.json").is_file()]  # fmt: skip
