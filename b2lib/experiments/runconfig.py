"""The settings of one experiment: :class:`RunConfig`, what the main notebook's parameters cell sets, checked as a
whole (every problem at once, :class:`ConfigError`) and turned into each method's trainer settings
(:meth:`RunConfig.trainer_config`). :mod:`b2lib.experiments.experiment` runs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from b2lib.experiments.presets import METHOD_NAMES, PRESETS, RECIPES, TEMPLATE_ALIASES, get_preset, trainer_config
from b2lib.training.trainer import TrainerConfig, equal_work_stages, nominal_work
from b2lib.utils.precision import DTYPES, check_dtype

__all__ = ["ConfigError", "RunConfig", "METHODS", "DEFAULT_METHODS", "COMPUTE_REFERENCE", "BASE", "job_label"]

METHODS = METHOD_NAMES
#: what a run trains unless told otherwise: the paper's comparison (the ablation variants are opt-in)
DEFAULT_METHODS = ("ddpo", "b2")
#: RunConfig fields added after run folders were first fingerprinted, with their defaults: a run's settings record
#: them only when set, so older folders keep their fingerprint and resume (see :meth:`RunConfig.settings`)
_ADDED_AT_DEFAULT = {
    "recipe": "paper",
    "budget": "images",
    "method_overrides": {},
    "dtype": "fp32",
    "eval_steps": 0,
}
#: the label of the base model's job (evaluated, never trained)
BASE = "base"


def job_label(method: str, seed: int | None = None) -> str:
    """The name of one model of a run: ``base``, or ``<method>_seed<k>``, its folder under the run's output (where
    its LoRA is: ``results/main/b2_seed0/lora``), its rows in the run's tables and its entry in the fingerprint."""
    return BASE if method == BASE else f"{method}_seed{seed}"


#: the method whose ``stages`` define an equal compute budget (``RunConfig.budget="compute"``)
COMPUTE_REFERENCE = "b2"
#: what ``RunConfig.reward`` may name, densest first: the world's CLIPScore, then the judge's rewards of the sparsity
#: axis (b2lib.world.evaluation.JUDGE_REWARDS; kept in sync by a test)
REWARDS = ("clip", "judge_graded", "judge", "judge_strict")


class ConfigError(ValueError):
    """Bad run settings: every problem found, one line each, naming the setting (``problems``: ``(field, message)``).
    Entry points rename the fields to what their users typed (``--images-per-stage`` on the command line)."""

    def __init__(self, problems: list[tuple[str, str]], names: dict[str, str] | None = None) -> None:
        self.problems = problems
        names = names or {}
        super().__init__("Bad run settings:\n" + "\n".join(f"  {names.get(f, f)}: {m}" for f, m in problems))


@dataclass
class RunConfig:
    """What the main notebook's parameters cell sets."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    template: str = "counting"
    preset: str = "embedded"
    stages: int = 0  # 0: the preset's default (embedded 20, paper 100)
    images_per_stage: int = 0  # both methods generate this many per stage (equal budget); 0: embedded 32, paper 1280
    branches: int = 0  # B² branches per prefix (prefixes per stage = images_per_stage // branches); 0: 4 / 5
    seeds: tuple[int, ...] = (0,)
    model_dir: str = ""
    clip_dir: str = ""
    run_name: str = "main"
    output_dir: str = ""  # "": results/<run_name> (a temp folder for smoke runs)
    # evaluation sizes, 0 = the preset's (presets.Preset: embedded and paper 512 images, every prompt; smoke 4 over 2)
    eval_n_per_prompt: int = 0  # images per eval prompt; 0: enough for eval_images (ceil(eval_images / prompts))
    eval_max_prompts: int = 0  # k: a fixed, evenly spaced subset of k prompts of the split; 0: the preset's (all)
    eval_images: int = 0  # with eval_n_per_prompt=0: at least this many eval images per model and split
    eval_seed: int = 1234
    eval_steps: int = 0  # steps of the evaluation chain; 0: the training chain's. Flow-GRPO trains on a 10-step chain
    # and evaluates on the full one: overrides={"num_steps": 10, ...} with eval_steps=20
    resume: bool = True  # continue from checkpoints found in the output folder
    overrides: dict = field(default_factory=dict)  # extra TrainerConfig fields, e.g. {"lr": 3e-4}
    train_prompts: tuple[str, ...] | None = None  # None: the template's train split; else train on these
    eval_prompts: tuple[str, ...] | None = None  # None: the template's test split; else evaluate on these
    eval_splits: tuple[str, ...] = ("test",)  # add "train" to also evaluate on (a subset of) the training prompts
    bertscore: bool = True  # also score evaluation images with BERTScore (caption vs prompt)
    save_lora: bool = True  # write each trained model's LoRA (diffusers format)
    grid_prompts: int = 8  # first image of the first k eval prompts per model -> samples.safetensors (figures)
    device: str = ""  # "": the preset's device (embedded: cpu); "cuda" runs the embedded world on a GPU
    reward: str = "clip"  # what the RL optimises, densest first: "clip" (CLIPScore), "judge_graded" (the fraction of
    # the prompt's attributes the world's judge finds right), "judge" (1 if it finds every attribute, else 0: a truly
    # sparse, binary reward), "judge_strict" (binary: every attribute and every object cleanly drawn; rarer); the
    # judge rewards need a world preset (b2lib.world.evaluation.JUDGE_REWARDS)
    recipe: str = "paper"  # the estimators: "paper" as published, "coarse" (b2lib.experiments.presets.RECIPES)
    reward_sign: int = 1  # -1: train on the negated reward (the sign control, b2lib.rewards.base.Negated); evaluation
    # always scores the real reward, so (gain(+1) - gain(-1)) / 2 is what the update learned and the mean their drift
    budget: str = "images"  # "images": every method runs `stages` stages of images_per_stage images (the paper's
    # equal-sample budget); "compute": `stages` is B²'s, and every other method runs the most stages whose UNet work
    # (b2lib.training.trainer.nominal_work, forward-equivalents) stays within B²'s (B² trains less per image, so sees
    # more)
    method_overrides: dict = field(default_factory=dict)  # per method, TrainerConfig fields laid over `overrides`:
    # each method's own tuned point, e.g. {"b2": {"lr": 1e-4}, "ddpo": {"lr": 3e-4, "timestep_fraction": 0.25}}
    dtype: str = (
        "fp32"  # compute dtype of every model forward, training and evaluation (b2lib.utils.precision): "fp32" or
    )
    # "bf16" (autocast; DDIM steps, log-probs, loss and scores fp32; needs a CPU with AVX512-BF16/AMX or a bf16 GPU)
    workers: int = 1  # processes that train and evaluate the run's models side by side (base, each method x seed),
    # cores // workers torch threads each; 0: one per model up to the CPU cores on a CPU, 1 on a GPU. Not part of the
    # fingerprint (like the device): it only changes how the work is spread, and the float rounding of thread counts

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        scale = get_preset(self.preset)
        for name in ("eval_images", "eval_max_prompts", "eval_n_per_prompt"):  # 0: the preset's (so recorded)
            if getattr(self, name) == 0:
                setattr(self, name, getattr(scale, name))
        self.methods = tuple(self.methods)
        self.seeds = tuple(self.seeds)
        self.train_prompts = tuple(self.train_prompts) if self.train_prompts is not None else None
        self.eval_prompts = tuple(self.eval_prompts) if self.eval_prompts is not None else None
        self.eval_splits = tuple(self.eval_splits)

    def problems(self) -> list[tuple[str, str]]:
        """Every problem of these settings as ``(field, message)``, found before any model is loaded: types (a
        papermill parameter of the wrong type included), ranges, combinations, folders that do not exist, and the
        trainer settings each method would get (``overrides`` included).

        Why in groups: each helper checks a few related fields, in the order the messages have always come; the
        trainer settings are tried only once the rest is sound, since they would fail on the same causes."""
        out = [
            *self._size_problems(),
            *self._choice_problems(),
            *self._input_problems(),
            *self._objective_problems(),
            *self._override_problems(),
            *self._dtype_problems(),
        ]
        return out or self._trainer_problems()

    def _size_problems(self) -> list[tuple[str, str]]:
        """The integer sizes (0 = the preset's where it has one) and ``branches`` (0 or at least 2)."""
        out = []
        for name, low, meaning in (
            ("stages", 0, "0 = the preset's default"),
            ("images_per_stage", 0, "0 = the preset's default"),
            ("eval_n_per_prompt", 0, "0 = enough for eval_images"),
            ("eval_max_prompts", 0, "0 = the preset's (every prompt)"),
            ("eval_steps", 0, "0 = the training chain's steps"),
            ("eval_images", 0, "0 = the preset's"),
            ("grid_prompts", 0, ""),
            ("eval_seed", 0, ""),
            ("workers", 0, "0 = one process per model up to the CPU cores"),
        ):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                out.append((name, f"must be an integer >= {low}{f' ({meaning})' if meaning else ''}; got {v!r}"))
        if not _is_int(self.branches) or self.branches < 0 or self.branches == 1:
            out.append(("branches", f"must be 0 (the preset's default) or an integer >= 2; got {self.branches!r}"))
        return out

    def _choice_problems(self) -> list[tuple[str, str]]:
        """``methods`` and ``seeds`` (non-empty lists, known methods, no seed twice), ``template`` and ``preset``."""
        out = []
        if not _listed(self.methods) or not self.methods:
            out.append(("methods", f"must be a non-empty list of {list(METHODS)}; got {self.methods!r}"))
        elif [m for m in self.methods if m not in METHODS]:
            out.append(
                ("methods", f"unknown {[m for m in self.methods if m not in METHODS]}; use any of {list(METHODS)}")
            )
        if not _listed(self.seeds) or not self.seeds or not all(_is_int(x) and x >= 0 for x in self.seeds):
            out.append(("seeds", f"must be a non-empty list of integers >= 0, e.g. [0, 1]; got {self.seeds!r}"))
        elif len(set(self.seeds)) != len(self.seeds):
            out.append(("seeds", f"lists a seed twice: {list(self.seeds)}"))
        if self.template not in TEMPLATE_ALIASES:
            out.append(("template", f"unknown {self.template!r}; use one of {sorted(TEMPLATE_ALIASES)}"))
        if self.preset not in PRESETS:
            out.append(("preset", f"unknown {self.preset!r}; use one of {list(PRESETS)}"))
        return out

    def _input_problems(self) -> list[tuple[str, str]]:
        """The model folders (which must exist where given as paths), the on/off flags, the prompt lists and the
        evaluation splits."""
        out = []
        for name in ("model_dir", "clip_dir"):
            v = getattr(self, name)
            if not isinstance(v, str):
                out.append((name, f"must be a folder path or '' (the preset's); got {v!r}"))
            elif v and (self.preset != "paper" or v.startswith(("/", ".", "~"))) and not Path(v).expanduser().is_dir():
                out.append((name, f"{v!r} does not exist (or is not a folder); '' uses the preset's model"))
        for name in ("resume", "bertscore", "save_lora"):
            if not isinstance(getattr(self, name), bool):
                out.append((name, f"must be True or False; got {getattr(self, name)!r}"))
        for name in ("train_prompts", "eval_prompts"):
            v = getattr(self, name)
            if v is not None and (not _listed(v) or not v or not all(isinstance(p, str) and p.strip() for p in v)):
                out.append((name, f"must be None (the template's prompts) or a non-empty list of prompts; got {v!r}"))
        if not _listed(self.eval_splits) or not self.eval_splits or set(self.eval_splits) - {"test", "train"}:
            out.append(("eval_splits", f"use 'test' and/or 'train'; got {self.eval_splits!r}"))
        return out

    def _objective_problems(self) -> list[tuple[str, str]]:
        """What is trained and how: ``reward`` (a judge reward needs a world preset), ``recipe``, ``reward_sign``,
        ``device`` (cuda only where torch sees a GPU) and ``budget``."""

        out = []
        if self.reward not in REWARDS:
            out.append(
                (
                    "reward",
                    f"use 'clip' (CLIPScore), 'judge_graded' (fraction of attributes right), 'judge' (binary) or "
                    f"'judge_strict' (binary, rarer); the judge rewards need a world preset; got {self.reward!r}",
                )
            )
        elif self.reward != "clip" and self.preset in PRESETS and not get_preset(self.preset).world:
            out.append(
                ("reward", f"{self.reward!r} needs a world's programmatic judge: use preset 'embedded' or 'flow'")
            )
        if self.recipe not in RECIPES:
            out.append(("recipe", f"use one of {sorted(RECIPES)}; got {self.recipe!r}"))
        if self.reward_sign not in (1, -1) or isinstance(self.reward_sign, bool):
            out.append(
                ("reward_sign", f"use 1 (train on the reward) or -1 (its sign control); got {self.reward_sign!r}")
            )
        if self.device not in ("", "cpu", "cuda"):
            out.append(("device", f"use '' (the preset's), 'cpu' or 'cuda'; got {self.device!r}"))
        elif self.device == "cuda" and not torch.cuda.is_available():
            out.append(("device", "'cuda' but torch sees no GPU: leave it empty to run on the CPU"))
        if self.budget not in ("images", "compute"):
            out.append(
                (
                    "budget",
                    f"use 'images' (equal images per method) or 'compute' (equal UNet work); got {self.budget!r}",
                )
            )
        return out

    def _override_problems(self) -> list[tuple[str, str]]:
        """``overrides`` and ``method_overrides``: dicts of known TrainerConfig fields with values of the right type
        (:func:`_field_problems`), keyed by known methods."""
        out = []
        if not isinstance(self.overrides, dict):
            out.append(
                ("overrides", f"must be a dict of TrainerConfig fields, e.g. {{'lr': 3e-4}}; got {self.overrides!r}")
            )
        else:
            out += _field_problems("overrides", self.overrides)
        if not isinstance(self.method_overrides, dict) or not all(
            isinstance(v, dict) for v in self.method_overrides.values()
        ):
            out.append(
                (
                    "method_overrides",
                    f"must map methods to dicts of TrainerConfig fields, e.g. {{'ddpo': {{'lr': 3e-4}}}}; "
                    f"got {self.method_overrides!r}",
                )
            )
            return out
        unknown = [m for m in self.method_overrides if m not in METHODS]
        if unknown:
            out.append(("method_overrides", f"unknown method(s) {unknown}; use any of {list(METHODS)}"))
        for method, fields_ in self.method_overrides.items():
            out += _field_problems("method_overrides", fields_, f"{method}: ")
        return out

    def _trainer_problems(self) -> list[tuple[str, str]]:
        """The trainer settings each method would get, tried (first seed): a combination the trainer refuses is named
        by ``overrides`` when there are any, else by ``images_per_stage``."""
        out = []
        for method in self.methods:
            try:
                self.trainer_config(method, self.seeds[0])
            except (TypeError, ValueError) as err:
                culprit = "overrides" if self.overrides or self.method_overrides else "images_per_stage"
                out.append((culprit, f"{method}: {err}"))
        return out

    def _dtype_problems(self) -> list[tuple[str, str]]:
        """``dtype``: a known name, native bf16 on the device the run will use
        (:func:`b2lib.utils.precision.check_dtype`), fp32 weights to autocast, and set here only: evaluation follows it
        too, so an override of the trainer's alone would evaluate in another dtype than it trained."""

        out = []
        per_method = self.method_overrides.values() if isinstance(self.method_overrides, dict) else []
        if any(isinstance(f, dict) and "dtype" in f for f in [self.overrides, *per_method]):
            out.append(("dtype", "set it with the run's dtype setting (--dtype), not in overrides or method_overrides"))
        if self.dtype not in DTYPES:
            return out + [("dtype", f"use one of {list(DTYPES)}; got {self.dtype!r}")]
        if self.dtype == "fp32" or self.preset not in PRESETS or self.device not in ("", "cpu", "cuda"):
            return out
        scale = get_preset(self.preset)
        if scale.torch_dtype != torch.float32:
            half = f"the {self.preset} preset loads {scale.torch_dtype} weights here (its own half precision)"
            out.append(("dtype", f"'bf16' autocasts fp32 weights; {half}: use dtype='fp32'"))
        try:
            check_dtype(self.dtype, self.device or scale.device)
        except ValueError as err:
            out.append(("dtype", str(err)))
        return out

    def settings(self, trainers: dict | None = None) -> dict:
        """What defines this run's numbers (everything but where it is written, whether it resumes, and the device,
        which ``config.json`` and ``summary.json`` record), with the resolved trainer settings of every method and
        seed: the run folder's fingerprint (:mod:`b2lib.utils.rundir`). ``trainers``: those settings already built
        (by job label, as :func:`b2lib.experiments.resolve.resolve` builds them), else built here."""
        own = {
            k: v for k, v in asdict(self).items() if k not in ("run_name", "output_dir", "resume", "device", "workers")
        }
        for name, default in _ADDED_AT_DEFAULT.items():  # fields newer than existing run folders: recorded when set
            if own.get(name) == default:
                own.pop(name)
        recorded = {}
        for seed in self.seeds:
            for method in self.methods:
                label = job_label(method, seed)
                tcfg = (trainers[label] if trainers else self.trainer_config(method, seed)).to_dict()
                tcfg.pop("progress", None)
                recorded[label] = tcfg
        return {"run": own, "trainer": recorded}

    def trainer_config(self, method: str, seed: int, **extra):
        """``method``'s trainer settings in this run: the preset's, this run's sizes (0 = the preset's) and
        ``overrides`` and ``method_overrides[method]``, then ``extra`` (e.g. ``progress``); under ``budget="compute"``
        the stage count that equals B²'s work. The one place a run turns into trainer settings."""
        stages = self.stages
        if self.budget == "compute" and method != COMPUTE_REFERENCE:
            stages = self.equal_compute_stages(method)
        return self._method_config(method, seed, stages, extra)

    def _method_config(self, method: str, seed: int, stages: int, extra: dict):
        own = {"dtype": self.dtype} if self.dtype != "fp32" else {}  # fp32: TrainerConfig's default
        fields_ = {**own, **self.overrides, **self.method_overrides.get(method, {}), **extra}
        return trainer_config(
            self.preset,
            method,
            stages=stages,
            images_per_stage=self.images_per_stage,
            branches=self.branches,
            seed=seed,
            recipe=self.recipe,
            **fields_,
        )

    def equal_compute_stages(self, method: str) -> int:
        """The stages ``method`` runs at B²'s compute (B² at ``stages``, both with their settings in this run): the
        most whose :func:`~b2lib.training.trainer.nominal_work` stays within B²'s."""

        work = nominal_work(self._method_config(COMPUTE_REFERENCE, 0, self.stages, {}))
        return equal_work_stages(self._method_config(method, 0, 1, {}), work)

    def n_per_prompt(self, n_prompts: int) -> int:
        """Eval images per prompt: ``eval_n_per_prompt``, or the fewest that give ``eval_images`` over the prompts."""
        return self.eval_n_per_prompt or max(1, -(-self.eval_images // max(n_prompts, 1)))


def _is_int(v: object) -> bool:
    """An ``int`` and not a ``bool`` (which Python counts as one): ``True`` is no stage count."""
    return isinstance(v, int) and not isinstance(v, bool)


def _listed(v: object) -> bool:
    """A list or a tuple: what a papermill parameter or the command line gives for a list setting."""
    return isinstance(v, (list, tuple))


def _field_problems(name: str, fields_: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Unknown TrainerConfig fields and values of the wrong type in ``fields_`` (``overrides``, or one method's
    ``method_overrides``), as ``(name, message)``."""

    known = TrainerConfig.__dataclass_fields__
    out = []
    for key, value in fields_.items():
        default = known[key].default if key in known else None
        wrong = (
            (isinstance(default, bool) and not isinstance(value, bool))
            or (isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))))
            or (
                isinstance(default, int)
                and not isinstance(default, bool)
                and (isinstance(value, bool) or not isinstance(value, int))
            )
            or (isinstance(default, str) and not isinstance(value, str))
        )
        if wrong:
            out.append((name, f"{prefix}{key} must be a {type(default).__name__} like {default!r}; got {value!r}"))
    unknown = sorted(set(fields_) - set(known))
    if unknown:
        out.append((name, f"{prefix}unknown TrainerConfig field(s) {unknown}"))
    return out
