"""One experiment = train some methods on one template at one scale, evaluate base and fine-tuned models on the same
prompts with the same seeds, and write everything under ``results/<run>/``. The notebooks are thin wrappers of this.

Files written (``<m>`` = method, ``<s>`` = seed):
``config.json`` · ``metrics.csv`` (per stage, method, seed) · ``eval.csv`` (base and every trained model) ·
``eval_images.csv`` (per image, for paired bootstrap intervals) · ``summary.json`` · ``<m>_seed<s>/lora`` (diffusers
LoRA: ``pipe.load_lora_weights(dir)``) ·
``<m>_seed<s>/checkpoints/stage_XXXX`` (resumable) · figures (``*.png``) from the notebook.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import latest_checkpoint, save_lora, save_unet
from .evaluate import evaluate_prompts, subset
from .paths import code_version, results_dir
from .presets import (
    METHOD_NAMES,
    PRESETS,
    TEMPLATE_ALIASES,
    canonical_template,
    get_preset,
    load_models,
    load_prompts,
    trainer_config,
)
from .progress import RunProgress, clock, terminal
from .rundir import (
    RunLock,
    check_fingerprint,
    disk_full_guard,
    move_aside,
    not_writable_guard,
    prepare_output_dir,
    write_text_atomic,
)
from .trainer import RLTrainer

__all__ = [
    "ConfigError",
    "RunConfig",
    "RunResult",
    "run_experiment",
    "run_many",
    "write_eval_images",
    "eval_split_prompts",
    "eval_settings",
    "EVAL_IMAGE_COLUMNS",
    "METHODS",
]

METHODS = METHOD_NAMES
#: what a run trains unless told otherwise: the paper's comparison (the ablation variants are opt-in)
DEFAULT_METHODS = ("ddpo", "b2")
#: RunConfig fields added after run folders were first fingerprinted, with their defaults: a run's settings record
#: them only when set, so older folders keep their fingerprint and resume (see :meth:`RunConfig.settings`)
_ADDED_AT_DEFAULT = {"recipe": "paper", "budget": "images", "method_overrides": {}, "dtype": "fp32"}
#: the method whose ``stages`` define an equal compute budget (``RunConfig.budget="compute"``)
COMPUTE_REFERENCE = "b2"


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
    resume: bool = True  # continue from checkpoints found in the output folder
    overrides: dict = field(default_factory=dict)  # extra TrainerConfig fields, e.g. {"lr": 3e-4}
    train_prompts: tuple[str, ...] | None = None  # None: the template's train split; else train on these
    eval_prompts: tuple[str, ...] | None = None  # None: the template's test split; else evaluate on these
    eval_splits: tuple[str, ...] = ("test",)  # add "train" to also evaluate on (a subset of) the training prompts
    bertscore: bool = True  # also score evaluation images with BERTScore (caption vs prompt)
    save_lora: bool = True  # write each trained model's LoRA (diffusers format)
    grid_prompts: int = 8  # first image of the first k eval prompts per model -> samples.safetensors (figures)
    device: str = ""  # "": the preset's device (embedded: cpu); "cuda" runs the embedded world on a GPU
    reward: str = "clip"  # what the RL optimises: "clip" (CLIPScore, dense) or "judge" (1 if the world's judge
    # finds every attribute of the prompt, else 0: a truly sparse, binary reward; embedded preset only)
    recipe: str = "paper"  # the estimators: "paper" as published, "coarse" (b2lib.presets.RECIPES)
    reward_sign: int = 1  # -1: train on the negated reward (the sign control, b2lib.rewards.Negated); evaluation
    # always scores the real reward, so (gain(+1) - gain(-1)) / 2 is what the update learned and the mean their drift
    budget: str = "images"  # "images": every method runs `stages` stages of images_per_stage images (the paper's
    # equal-sample budget); "compute": `stages` is B²'s, and every other method runs the most stages whose UNet work
    # (b2lib.trainer.nominal_work, forward-equivalents) stays within B²'s (B² trains less per image, so sees more)
    method_overrides: dict = field(default_factory=dict)  # per method, TrainerConfig fields laid over `overrides`:
    # each method's own tuned point, e.g. {"b2": {"lr": 1e-4}, "ddpo": {"lr": 3e-4, "timestep_fraction": 0.25}}
    dtype: str = "fp32"  # compute dtype of every model forward, training and evaluation (b2lib.precision): "fp32" or
    # "bf16" (autocast; DDIM steps, log-probs, loss and scores fp32; needs a CPU with AVX512-BF16/AMX or a bf16 GPU)

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
        trainer settings each method would get (``overrides`` included)."""
        out: list[tuple[str, str]] = []

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def listed(v) -> bool:
            return isinstance(v, (list, tuple))

        for name, low, meaning in (
            ("stages", 0, "0 = the preset's default"),
            ("images_per_stage", 0, "0 = the preset's default"),
            ("eval_n_per_prompt", 0, "0 = enough for eval_images"),
            ("eval_max_prompts", 0, "0 = the preset's (every prompt)"),
            ("eval_images", 0, "0 = the preset's"),
            ("grid_prompts", 0, ""),
            ("eval_seed", 0, ""),
        ):
            v = getattr(self, name)
            if not is_int(v) or v < low:
                out.append((name, f"must be an integer >= {low}{f' ({meaning})' if meaning else ''}; got {v!r}"))
        if not is_int(self.branches) or self.branches < 0 or self.branches == 1:
            out.append(("branches", f"must be 0 (the preset's default) or an integer >= 2; got {self.branches!r}"))
        if not listed(self.methods) or not self.methods:
            out.append(("methods", f"must be a non-empty list of {list(METHODS)}; got {self.methods!r}"))
        elif [m for m in self.methods if m not in METHODS]:
            out.append(
                ("methods", f"unknown {[m for m in self.methods if m not in METHODS]}; use any of {list(METHODS)}")
            )
        if not listed(self.seeds) or not self.seeds or not all(is_int(x) and x >= 0 for x in self.seeds):
            out.append(("seeds", f"must be a non-empty list of integers >= 0, e.g. [0, 1]; got {self.seeds!r}"))
        elif len(set(self.seeds)) != len(self.seeds):
            out.append(("seeds", f"lists a seed twice: {list(self.seeds)}"))
        if self.template not in TEMPLATE_ALIASES:
            out.append(("template", f"unknown {self.template!r}; use one of {sorted(TEMPLATE_ALIASES)}"))
        if self.preset not in PRESETS:
            out.append(("preset", f"unknown {self.preset!r}; use one of {list(PRESETS)}"))
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
            if v is not None and (not listed(v) or not v or not all(isinstance(p, str) and p.strip() for p in v)):
                out.append((name, f"must be None (the template's prompts) or a non-empty list of prompts; got {v!r}"))
        if not listed(self.eval_splits) or not self.eval_splits or set(self.eval_splits) - {"test", "train"}:
            out.append(("eval_splits", f"use 'test' and/or 'train'; got {self.eval_splits!r}"))
        if self.reward not in ("clip", "judge"):
            out.append(("reward", f"use 'clip' (CLIPScore) or 'judge' (binary, embedded preset); got {self.reward!r}"))
        elif self.reward == "judge" and self.preset == "paper":
            out.append(("reward", "'judge' needs the embedded world's programmatic judge: use preset='embedded'"))
        from .presets import RECIPES

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
        else:
            unknown = [m for m in self.method_overrides if m not in METHODS]
            if unknown:
                out.append(("method_overrides", f"unknown method(s) {unknown}; use any of {list(METHODS)}"))
            for method, fields_ in self.method_overrides.items():
                out += _field_problems("method_overrides", fields_, f"{method}: ")
        out += self._dtype_problems()
        if not out:  # the trainer settings each method would get: only once the rest is sound
            for method in self.methods:
                try:
                    self.trainer_config(method, self.seeds[0])
                except (TypeError, ValueError) as err:
                    culprit = "overrides" if self.overrides or self.method_overrides else "images_per_stage"
                    out.append((culprit, f"{method}: {err}"))
        return out

    def _dtype_problems(self) -> list[tuple[str, str]]:
        """``dtype``: a known name, native bf16 on the device the run will use (:func:`b2lib.precision.check_dtype`),
        fp32 weights to autocast, and set here only: evaluation follows it too, so an override of the trainer's alone
        would evaluate in another dtype than it trained."""
        from .precision import DTYPES, check_dtype

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

    def settings(self) -> dict:
        """What defines this run's numbers (everything but where it is written, whether it resumes, and the device,
        which ``config.json`` and ``summary.json`` record), with the
        resolved trainer settings of every method and seed: the run folder's fingerprint (:mod:`b2lib.rundir`)."""
        own = {k: v for k, v in asdict(self).items() if k not in ("run_name", "output_dir", "resume", "device")}
        for name, default in _ADDED_AT_DEFAULT.items():  # fields newer than existing run folders: recorded when set
            if own.get(name) == default:
                own.pop(name)
        trainers = {}
        for seed in self.seeds:
            for method in self.methods:
                tcfg = self.trainer_config(method, seed).to_dict()
                tcfg.pop("progress", None)
                trainers[f"{method}_seed{seed}"] = tcfg
        return {"run": own, "trainer": trainers}

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
        most whose :func:`~b2lib.trainer.nominal_work` stays within B²'s."""
        from .trainer import equal_work_stages, nominal_work

        work = nominal_work(self._method_config(COMPUTE_REFERENCE, 0, self.stages, {}))
        return equal_work_stages(self._method_config(method, 0, 1, {}), work)

    def n_per_prompt(self, n_prompts: int) -> int:
        """Eval images per prompt: ``eval_n_per_prompt``, or the fewest that give ``eval_images`` over the prompts."""
        return self.eval_n_per_prompt or max(1, -(-self.eval_images // max(n_prompts, 1)))


def _field_problems(name: str, fields_: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Unknown TrainerConfig fields and values of the wrong type in ``fields_`` (``overrides``, or one method's
    ``method_overrides``), as ``(name, message)``."""
    from .trainer import TrainerConfig

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


@dataclass
class RunResult:
    out: Path
    metrics: pd.DataFrame  # one row per (method, seed, stage)
    evals: pd.DataFrame  # one row per model (base, method x seed)
    images: dict[str, torch.Tensor]  # model label -> eval images (same prompts and seeds for every model)
    prompts: list[str]  # the eval prompts, prompt-major, eval_n_per_prompt each
    wall_s: float


def _judge_fn(preset: str):
    if get_preset(preset).world:
        from .world import judge_batch

        return judge_batch
    return None  # no programmatic judge for natural images


def _stage_metric_fn(preset: str):
    if get_preset(preset).world:
        from .world.evaluation import judge_metrics

        return judge_metrics
    return None


@functools.lru_cache(maxsize=2)
def _text_metric(preset: str, device: str):
    """BERTScore for evaluation: the world's captioner + packaged MiniLM (embedded), BLIP + roberta-large (paper)."""
    from .bertscore import BertScore

    if get_preset(preset).world:
        return BertScore.for_world(device=device)
    return BertScore.from_pretrained(device=device)


def _save_samples(images: dict, n_per_prompt: int, k: int, path: Path) -> None:
    """The first image of each of the first ``k`` eval prompts, per model, as uint8 (figures are rebuilt from it)."""
    from safetensors.torch import save_file

    tensors = {}
    for label, imgs in images.items():
        idx = torch.arange(0, imgs.shape[0], n_per_prompt)[:k]
        tensors[label] = (imgs[idx].clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    with disk_full_guard(path, "the sample grid", RESULTS_RERUN, sum(t.numel() for t in tensors.values())):
        try:
            save_file(tensors, str(tmp))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def eval_split_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """The prompts each evaluation split scores (``"test"``, ``"train"``): the run's own lists if it set them, else the
    template's, cut to ``eval_max_prompts`` evenly spaced ones. One place, so an evaluation added to a finished run
    (:func:`b2lib.reevaluate.add_eval_split`) scores exactly what the run itself would have."""
    template = canonical_template(cfg.template)
    train = list(cfg.train_prompts) if cfg.train_prompts else load_prompts(cfg.preset, template, "train")
    test = list(cfg.eval_prompts) if cfg.eval_prompts else load_prompts(cfg.preset, template, "test")
    return {
        "test": test if cfg.eval_prompts else subset(test, cfg.eval_max_prompts),
        "train": subset(train, cfg.eval_max_prompts),
    }


def eval_settings(cfg: RunConfig, device: str, bertscore: bool = True) -> dict:
    """Keyword arguments of :func:`b2lib.evaluate.evaluate_prompts` for ``cfg``'s evaluation: its judge, noise seed,
    text metric, the chain the models were trained on (steps, eta, guidance; a tree's levels are not the chain's) and
    the run's compute dtype."""
    chain_fields = {k: v for k, v in cfg.overrides.items() if not k.startswith("tree")}
    chain = trainer_config(cfg.preset, "ddpo", **chain_fields)
    return dict(
        judge_fn=_judge_fn(cfg.preset),
        seed=cfg.eval_seed,
        text_metric=_text_metric(cfg.preset, device) if (cfg.bertscore and bertscore) else None,
        num_steps=chain.num_steps,
        guidance_scale=chain.guidance_scale,
        eta=chain.eta,
        dtype=cfg.dtype,
    )


#: what rerunning a run does after its result files failed to write (the trained models are safe in checkpoints)
RESULTS_RERUN = (
    "the models trained so far are checkpointed, so a rerun resumes them at their last stage and evaluates again"
)


def _write_result(path: Path, text: str) -> None:
    """Write a result file atomically (a full disk leaves the old file or none, never a truncated table), turning a
    full disk into a :class:`~b2lib.rundir.DiskFullError` that names the file and the fix."""
    with disk_full_guard(path, "run results", RESULTS_RERUN, len(text.encode())):
        write_text_atomic(path, text)


def run_experiment(cfg: RunConfig, progress: bool = True, accelerator=None) -> RunResult:
    """Train and evaluate as ``cfg`` says. Under ``accelerate launch`` every process trains (sampling split over
    processes, gradients synchronised); evaluation and files are the main process's job."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    out = Path(cfg.output_dir) if cfg.output_dir else results_dir(cfg.run_name)
    prepare_output_dir(out)  # a read-only or full output folder stops here, before any model loads
    acc = accelerator or Accelerator(cpu=(cfg.device or get_preset(cfg.preset).device) == "cpu")
    main = acc.is_main_process
    with RunLock(out) if main else contextlib.nullcontext():
        if main:
            with not_writable_guard(out, "nothing was trained yet"):
                if not cfg.resume:
                    moved = move_aside(out)
                    if moved is not None:
                        print(f"resume=False: the folder's earlier content was moved to {moved}")
                check_fingerprint(out, cfg.settings())
                write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
        acc.wait_for_everyone()
        return _run(cfg, acc, out, t0, progress)


def _run(cfg: RunConfig, acc, out: Path, t0: float, progress: bool) -> RunResult:
    main = acc.is_main_process
    template = canonical_template(cfg.template)
    train_prompts = list(cfg.train_prompts) if cfg.train_prompts else load_prompts(cfg.preset, template, "train")
    split_prompts = eval_split_prompts(cfg)
    eval_prompts = split_prompts[cfg.eval_splits[0]]
    metric_fn = _stage_metric_fn(cfg.preset)

    device = str(acc.device)
    report = RunProgress(progress and acc.is_local_main_process, bars=terminal())
    with report.quiet_loading():
        pipe, reward = load_models(cfg.preset, cfg.model_dir, cfg.clip_dir, device=device)
        eval_kwargs = eval_settings(cfg, device, bertscore=cfg.bertscore and main)  # loads the BERTScore model
    rows, images, per_image = [], {}, []
    n_first = cfg.n_per_prompt(len(eval_prompts))
    eval_batch = [p for p in eval_prompts for _ in range(n_first)]
    train_reward = reward
    if cfg.reward == "judge":
        from .world.evaluation import judge_reward as train_reward
    if cfg.reward_sign == -1:
        from .rewards import Negated

        train_reward = Negated(train_reward)

    def evaluate(label: str, method: str, seed) -> None:
        for split in cfg.eval_splits:
            prompts = split_prompts[split]
            n = cfg.n_per_prompt(len(prompts))
            report.evaluation_started(label, split, n * len(prompts))
            start = time.perf_counter()
            table, summary, imgs = evaluate_prompts(pipe, prompts, reward, n_per_prompt=n, **eval_kwargs)
            report.evaluation_done(label, split, summary, time.perf_counter() - start)
            rows.append({"model": label, "method": method, "seed": seed, "split": split, **summary})
            per_image.append(table.assign(model=label, method=method, seed=seed, split=split, image=range(len(table))))
            if split == cfg.eval_splits[0]:
                images[label] = imgs

    if main:
        evaluate("base", "base", None)

    metrics = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            label = f"{method}_seed{seed}"
            with report.quiet_loading():
                pipe, _ = load_models(cfg.preset, cfg.model_dir, cfg.clip_dir, device=device)  # fresh base weights
            # tqdm bars on a terminal; elsewhere (a notebook, papermill, a log file) the report's lines instead
            tcfg = cfg.trainer_config(method, seed, progress=progress and report.bars)
            trainer = RLTrainer(pipe, train_reward, train_prompts, tcfg, accelerator=acc, metric_fn=metric_fn)
            ckpt_dir = out / label / "checkpoints"
            resume = latest_checkpoint(out / label) if cfg.resume else None
            on_stage = report.training(label, tcfg.num_stages, int(resume.name.split("_")[-1]) if resume else 0)
            trainer.train(checkpoint_dir=ckpt_dir, resume_from=resume, on_stage=on_stage)
            acc.wait_for_everyone()
            for m in trainer.log:
                metrics.append({"method": method, "seed": seed, **m})
            if main:
                if cfg.save_lora and tcfg.use_lora:
                    save_lora(pipe, out / label / "lora")
                elif cfg.save_lora:
                    save_unet(pipe, out / label / "unet")  # a full fine-tune: UNet2DConditionModel.from_pretrained
                evaluate(label, method, seed)
                _write_result(out / "metrics.csv", pd.DataFrame(metrics).to_csv(index=False))  # survives a crash

    if main and cfg.grid_prompts:
        _save_samples(images, n_first, cfg.grid_prompts, out / "samples.safetensors")
    metrics_df, evals = pd.DataFrame(metrics), pd.DataFrame(rows)
    wall = time.perf_counter() - t0
    if main:
        _write_result(out / "metrics.csv", metrics_df.to_csv(index=False))
        _write_result(out / "eval.csv", evals.to_csv(index=False))
        write_eval_images(pd.concat(per_image, ignore_index=True), out)
        _write_result(  # last: its presence marks the run as finished (run_many skips such folders)
            out / "summary.json",
            json.dumps(
                {
                    "wall_s": wall,
                    "template": template,
                    "preset": cfg.preset,
                    "processes": acc.num_processes,
                    "torch_threads": torch.get_num_threads(),
                    "eval_prompts": eval_prompts,
                    "device": str(acc.device),
                    "device_name": torch.cuda.get_device_name(acc.device) if acc.device.type == "cuda" else "cpu",
                    "grid_prompts": eval_prompts[: cfg.grid_prompts],
                    "code": code_version(),
                    "eval": evals.to_dict(orient="records"),
                },
                indent=2,
                default=str,
            ),
        )
        report.say(f"run finished in {clock(wall)}: results in {out}")
    return RunResult(out, metrics_df, evals, images, eval_batch, wall)


#: Columns of ``eval_images.csv``: one row per (model, split, image). ``image`` is the index in the split's
#: prompt-major batch; every model sees the same prompt and noise at the same index, so rows pair across models.
EVAL_IMAGE_COLUMNS = ("model", "method", "seed", "split", "image", "prompt", "reward", "bertscore", "judge_all_ok")


def write_eval_images(table: pd.DataFrame, out: Path) -> Path:
    """Write the per-image evaluation scores (what the bootstrap intervals of :mod:`b2lib.stats` resample)."""
    cols = [c for c in EVAL_IMAGE_COLUMNS if c in table.columns]
    path = Path(out) / "eval_images.csv"
    _write_result(path, table[cols].to_csv(index=False))
    return path


def _run_worker(cfg: RunConfig, threads: int) -> tuple[str, float]:
    torch.set_num_threads(threads)
    result = run_experiment(cfg, progress=False)
    return str(result.out), result.wall_s


def run_many(
    configs: list[RunConfig],
    workers: int = 1,
    threads: int | None = None,
    skip_done: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Run independent experiments (e.g. one per template x seed), ``workers`` at a time in separate processes.

    Why processes: the embedded world's models are small, so on a few CPU cores several single-threaded runs use the
    cores better than one run with several threads. Each run writes its own ``output_dir`` (required); a run whose
    ``summary.json`` exists is skipped when ``skip_done`` (so re-running a notebook after a crash only does what is
    missing, and an unfinished run resumes from its checkpoints). ``threads``: torch threads per worker (default:
    cores // workers). Returns the output folders, in the order of ``configs``.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    outs = []
    for cfg in configs:
        if not cfg.output_dir:
            raise ValueError("run_many needs an output_dir per RunConfig, so runs do not overwrite each other.")
        outs.append(Path(cfg.output_dir))
    if len(set(outs)) != len(outs):
        raise ValueError("Two RunConfigs share an output_dir; give each run its own folder.")
    for cfg, o in zip(configs, outs):  # a finished folder is only skipped if it holds the run asked for
        if skip_done and (o / "summary.json").exists() and (o / "run.json").exists():
            from .rundir import check_fingerprint

            check_fingerprint(o, cfg.settings())
    todo = [c for c, o in zip(configs, outs) if not (skip_done and (o / "summary.json").exists())]
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)
    if workers <= 1:
        for cfg in todo:
            _run_worker(cfg, threads)
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_worker, cfg, threads): cfg for cfg in todo}
            for fut in as_completed(futures):
                fut.result()  # re-raise a failed run's error here
                bar.update(1)
    bar.close()
    return outs
