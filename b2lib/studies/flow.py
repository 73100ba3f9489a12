"""The flow study as data: which gradient estimators are measured, which runs the search and the study make, and where
each run's folder lies, so notebook 15 and the queue that drains the runs (``scripts/flow_queue.py``) build the very
same runs (a finished folder is skipped only if its fingerprint matches).

Why a queue of small folders: the study needs hours of CPU, more than one sitting. Each folder is one method at one
seed (its own evaluation of the base model beside it, on the same prompts and noise as every other folder's), small
enough to finish and be kept before the next, so an interrupted study loses at most the runs in flight.

The order of the work, as the DDIM world's recipe was found: the stage gradient SNR at the base model under the
published and the coarse recipe (:data:`FLOW_SNR_ARMS`), then each method's own search over its learning rate and
optimizer steps per stage on the train-split reward (:meth:`FlowStudy.search_runs`), then the study at each method's
chosen point (:meth:`FlowStudy.study_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from b2lib.experiments.experiment import RunConfig
from b2lib.experiments.presets import trainer_config
from b2lib.studies.tuning import search_config, sweep_runs
from b2lib.training.recipes import recipe_switches

__all__ = ["FLOW_METHODS", "FLOW_SNR_ARMS", "MOVED_KL", "FlowStudy", "moved"]

#: The approx KL per stage (mean over stages) above which a run's policy counts as moving: the front page's rule for
#: "the runs did not learn" (below it), four decades above the first flow study's ~1e-14 and two below the DDIM
#: world's B² at ~1e-6.
MOVED_KL = 1e-8

#: The study's methods: the flow-GRPO family's three, B², and B²'s depth-2 tree.
FLOW_METHODS = ("flow_grpo", "mixgrpo", "tempflow", "b2", "tree")

#: The estimators whose stage gradient SNR picks the flow recipe (:func:`b2lib.studies.gradient_snr.snr_study` with
#: ``preset="flow"``): B² and Flow-GRPO under the published recipe and under the coarse one (each method's switches of
#: :data:`b2lib.training.recipes.RECIPES`), B² at its first stage (branched at the middle of the chain) and, under the
#: coarse recipe, also at its last (branched at x_T).
FLOW_SNR_ARMS: dict[str, dict] = {
    "b2_first": dict(method="b2", stage="first", reward="clip"),
    "flow_grpo": dict(method="flow_grpo", stage="first", reward="clip"),
    "b2_first_coarse": dict(method="b2", stage="first", reward="clip", overrides=recipe_switches("coarse", "b2")),
    "b2_last_coarse": dict(method="b2", stage="last", reward="clip", overrides=recipe_switches("coarse", "b2")),
    "flow_grpo_coarse": dict(
        method="flow_grpo", stage="first", reward="clip", overrides=recipe_switches("coarse", "flow_grpo")
    ),
    # more signal per stage: 4x the images (32 prompts x 4 branches), the same recipe
    "b2_first_coarse_n128": dict(
        method="b2", stage="first", reward="clip", overrides=recipe_switches("coarse", "b2"), images_per_stage=128
    ),
}


@dataclass
class FlowStudy:
    """Notebook 15's parameters, turned into runs. ``stages``: B²'s in the study (every other method runs the stages
    of the same transformer work, ``budget="compute"``); ``search_stages``: B²'s in the search. ``tree``: the tree
    arm's levels (``[branch_at, branches]``, 0 = x_T), one stored step per node."""

    out: Path
    run_name: str = "flow_study"
    template: str = "counting"
    methods: tuple[str, ...] = FLOW_METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    stages: int = 120
    search_stages: int = 40
    recipe: str = "coarse"
    budget: str = "compute"
    tree: list = field(default_factory=lambda: [[5, 2], [10, 2]])
    #: every method's search space. 3e-3, in the first grid, was dropped before it ran: at 3e-4 and 1e-3 every method's
    #: train-split gain was negative and fell with the learning rate, so 3e-5 and 1e-4 were tried instead
    grid: dict = field(default_factory=lambda: {"lr": [3e-5, 1e-4, 3e-4, 1e-3], "grad_accum": [4, 1]})
    search_seeds: tuple[int, ...] = (0,)
    search_eval_images: int = 64
    snr_draws: int = 32
    #: the arms of :data:`FLOW_SNR_ARMS` measured
    snr_arms: tuple[str, ...] = tuple(FLOW_SNR_ARMS)
    eval_images: int = 0
    images_per_stage: int = 0
    overrides: dict = field(default_factory=dict)
    #: the sign control: ``sign_method`` at its chosen point trained on the negated reward, at these seeds
    sign_method: str = "b2"
    sign_seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.methods, self.seeds, self.search_seeds = tuple(self.methods), tuple(self.seeds), tuple(self.search_seeds)
        self.sign_seeds, self.snr_arms = tuple(self.sign_seeds), tuple(self.snr_arms)
        unknown = set(self.snr_arms) - set(FLOW_SNR_ARMS)
        if unknown:
            known = list(FLOW_SNR_ARMS)
            raise ValueError(f"snr_arms {sorted(unknown)} are not arms of FLOW_SNR_ARMS: use some of {known}.")

    @property
    def tree_fields(self) -> dict:
        """The tree arm's own fields (its levels, one stored step per node), laid under every point of it."""
        return {"tree": {"tree": self.tree, "window": 1}}

    def _common(self, stages: int) -> dict:
        return dict(
            preset="flow",
            template=self.template,
            stages=stages,
            budget=self.budget,
            images_per_stage=self.images_per_stage,
            overrides=self.overrides,
            recipe=self.recipe,
        )

    def search_runs(self) -> list[tuple[dict, RunConfig]]:
        """``(grid point, RunConfig)`` of every method x grid point x search seed, in ``out/search``."""
        base = RunConfig(
            methods=("b2",),
            eval_images=self.search_eval_images,
            method_overrides=self.tree_fields,
            **self._common(self.search_stages),
        )
        return sweep_runs(base, self.out / "search", self.methods, self.search_seeds, self.grid)

    def chosen_overrides(self, choice: dict[str, dict]) -> dict[str, dict]:
        """Each method's fields at its chosen grid point (``choice``: :func:`b2lib.studies.tuning.choose`), over its
        own fields."""
        return {
            m: {**self.tree_fields.get(m, {}), **{k: v for k, v in c.items() if k in self.grid}}
            for m, c in choice.items()
        }

    def lever_runs(self, choice: dict[str, dict], methods=("b2", "flow_grpo")) -> list[RunConfig]:
        """Flow-GRPO's cheapest lever: ``methods`` at their chosen points trained on a chain of half the steps
        (B²'s first branch point halved with it) and evaluated on the full chain, at the search's stages, in
        ``out/lever``. Compared with the search's run of the same point, it says whether a shorter training chain
        learns as well here (then every run costs about half)."""
        steps = self._steps()
        short = {"num_steps": steps // 2, "split_start": self._split_start() // 2}
        chosen = self.chosen_overrides(choice)
        runs = []
        for m in methods:
            point = {k: v for k, v in chosen[m].items() if k in self.grid}
            base = RunConfig(
                methods=(m,),
                eval_images=self.search_eval_images,
                eval_steps=steps,
                **{**self._common(self.search_stages), "overrides": {**self.overrides, **point, **short}},
            )
            folder = self.out / "lever" / f"{m}_steps{steps // 2}_seed{self.search_seeds[0]}"
            runs.append(search_config(base, m, self.search_seeds[0], {}, folder))
        return runs

    def lever_table(self, choice: dict[str, dict], search):
        """The lever's runs beside the search's runs of the same chosen points (``search``: :meth:`search_results`),
        one row per method and training chain (``train_steps``): gain, optimizer steps, approx KL, seconds."""
        import pandas as pd

        from b2lib.studies.tuning import sweep_table

        runs = self.lever_runs(choice)
        short = sweep_table([({"train_steps": self._steps() // 2}, cfg) for cfg in runs])
        points = pd.DataFrame(
            [{"method": m, **{k: v for k, v in c.items() if k in self.grid}} for m, c in choice.items()]
        )
        full = search.merge(points, on=["method", *self.grid])
        full = full[full["method"].isin(short["method"])].assign(train_steps=self._steps())
        cols = ["method", "train_steps", "gain", "optimizer_steps", "mean_approx_kl", "train_s"]
        return pd.concat([full, short])[cols].reset_index(drop=True)

    def _steps(self) -> int:
        return int(self.overrides.get("num_steps", trainer_config("flow", "b2").num_steps))

    def _split_start(self) -> int:
        return int(self.overrides.get("split_start", trainer_config("flow", "b2").split_start))

    def speed(self, repeats: int = 5, batch: int = 16) -> dict:
        """The flow policy's samplers against stock ``StableDiffusion3Pipeline`` on the shipped flow world, ``batch``
        test prompts of the template, the world's chain (:func:`b2lib.bench.flow.bench_flow_sampler_vs_pipeline`),
        with the machine it ran on; kept in ``out/speed.json`` and read from there once measured."""
        import json

        path = self.out / "speed.json"
        if path.is_file():
            return json.loads(path.read_text())
        from b2lib.bench.flow import bench_flow_sampler_vs_pipeline
        from b2lib.bench.timing import machine_info
        from b2lib.experiments.presets import load_models, load_prompts

        chain = trainer_config("flow", "b2")
        pipe, _ = load_models("flow")
        prompts = load_prompts("flow", self.template, "test")[:batch]
        result = bench_flow_sampler_vs_pipeline(
            pipe, prompts, chain.num_steps, chain.guidance_scale, chain.eta, repeats=repeats
        )
        result["machine"] = machine_info()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        return result

    def search_results(self):
        """The search's table (:func:`b2lib.studies.tuning.sweep_table`) over its finished runs, with each run's
        train-reward rise over its stages against its stage-to-stage noise
        (:func:`b2lib.evaluation.health.reward_trend`): what the choice and the check that the policies move read."""
        from b2lib.studies.tuning import sweep_table, with_reward_trend

        done = [(p, c) for p, c in self.search_runs() if (Path(c.output_dir) / "summary.json").is_file()]
        return with_reward_trend(sweep_table(done), done)

    def study_configs(self, choice: dict[str, dict]) -> list[RunConfig]:
        """One run per method and seed at the method's chosen point, seeds outermost (a seed's methods land together),
        each in ``out/<method>_seed<k>``: 512 paired test images and the base model's beside them."""
        chosen = self.chosen_overrides(choice)
        return [
            RunConfig(
                methods=(m,),
                seeds=(s,),
                eval_images=self.eval_images,
                method_overrides={m: chosen[m]},
                output_dir=str(self.out / f"{m}_seed{s}"),
                **self._common(self.stages),
            )
            for s in self.seeds
            for m in self.methods
        ]

    def sign_configs(self, choice: dict[str, dict]) -> list[RunConfig]:
        """The sign control: :attr:`sign_method` at its chosen point trained on the negated reward
        (``reward_sign=-1``), one folder per seed of :attr:`sign_seeds` in ``out/negated/<method>_seed<k>``, evaluated
        on the real reward and on the same images as the study's folders. Read beside the study's run of the same
        seed (:func:`b2lib.evaluation.comparisons.sign_control`): a gain that flips with the reward's sign was learned,
        one that does not is drift."""
        m = self.sign_method
        return [
            RunConfig(
                methods=(m,),
                seeds=(s,),
                eval_images=self.eval_images,
                method_overrides={m: self.chosen_overrides(choice)[m]},
                reward_sign=-1,
                output_dir=str(self.out / "negated" / f"{m}_seed{s}"),
                **self._common(self.stages),
            )
            for s in self.sign_seeds
        ]

    def images_pilot(self, choice: dict[str, dict], images_per_stage: int = 128, method: str = "b2", seed: int = 0):
        """One run of ``method`` at its chosen point and the study's stages with ``images_per_stage`` images per stage
        (the study's: the preset's 32), in ``out/n<images>/<method>_seed<k>``, evaluated like the study's folders. Why:
        the lever the stage gradient SNR points to when the study's gain does not reach the judge (B²'s coarse SNR rises
        from 0.026 at 32 images to 0.065 at 128); one seed says whether it moves more before a grid is spent on it."""
        return RunConfig(
            methods=(method,),
            seeds=(seed,),
            eval_images=self.eval_images,
            method_overrides={method: self.chosen_overrides(choice)[method]},
            output_dir=str(self.out / f"n{images_per_stage}" / f"{method}_seed{seed}"),
            **{**self._common(self.stages), "images_per_stage": images_per_stage},
        )

    def sign_pairs(self) -> list[Path]:
        """The folders :func:`~b2lib.evaluation.comparisons.sign_control` reads: each finished negated run and the
        study's run of the same method and seed."""
        from b2lib.studies.tuning import finished_sign_pairs

        return finished_sign_pairs(self.out, self.sign_method, self.sign_seeds)


def moved(table, choice: dict[str, dict]):
    """One row per method at its chosen point of a :meth:`FlowStudy.search_results` table: its mean approx KL, its
    train-reward rise over noise, and ``moved``: approx KL above :data:`MOVED_KL` and the reward rising by more than its
    stage-to-stage noise. The check that comes before the 5-seed study: a method that did not move at the search's
    budget needs a larger budget or another recipe first."""
    rows = []
    for method, point in choice.items():
        hit = table[table["method"] == method]
        for key, value in point.items():
            if key in hit:
                hit = hit[hit[key] == value]
        r = hit.iloc[0]
        rows.append(
            {
                "method": method,
                **{k: v for k, v in point.items() if k != "mean_gain"},
                "gain": float(r["gain"]),
                "mean_approx_kl": float(r["mean_approx_kl"]),
                "rise_over_noise": float(r["rise_over_noise"]),
                "optimizer_steps": int(r["optimizer_steps"]),
                "moved": bool(r["mean_approx_kl"] > MOVED_KL and r["rise_over_noise"] > 1),
            }
        )
    import pandas as pd

    return pd.DataFrame(rows).set_index("method")
