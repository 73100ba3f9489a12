"""bf16 compute (b2lib.utils.precision): what it changes, by how much, what it leaves bit-identical, and where it
refuses.

The tolerances are measured on this suite's tiny pipeline (tests/tiny.py: random weights, 6-step chains, guidance 5,
8 prompts; seeds 0-2 on a 2-core AMD EPYC with AVX512-BF16): the bf16 log-prob of a stored transition differed from
the fp32 one by at most 0.012-0.019 (mean 0.0017-0.0019) while the log-probs of one step spread by 0.033-0.045
across samples; images sampled with the same noise by at most 0.013 (mean 0.0019) in [0, 1] units. The bounds below
are about 2.5x those, so the tests fail if bf16 leaks into the DDIM step or the loss (an order of magnitude more) or
stops being applied (no difference at all).
"""

import contextlib
import math

import pytest
import torch

from b2lib import B2Trainer, TrainerConfig, precision
from b2lib.algorithm.sampling import sample_branches, sample_trajectories, transition_policy
from b2lib.algorithm.tree import sample_tree
from b2lib.utils.precision import compute_dtype, current_dtype

pytestmark = pytest.mark.skipif(precision.bf16_problem("cpu") is not None, reason="no native bf16 on this CPU")

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "one yellow star"] * 2
#: |log p_bf16 - log p_fp32| of one transition, at most (measured <= 0.019) and on average (measured <= 0.0019)
LOGP_MAX, LOGP_MEAN = 0.05, 0.005
#: images sampled with the same noise, |bf16 - fp32| in [0, 1] units: at most (measured 0.013), on average (0.0019)
IMAGE_MAX, IMAGE_MEAN = 0.04, 0.005


def redness(images, prompts):
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _all_transitions(traj):
    n, k = traj.log_probs.shape
    return torch.arange(n).repeat_interleave(k), torch.arange(k).repeat(n)


def test_bf16_log_probs_stay_within_tolerance_of_fp32_on_the_same_transitions(tiny_pipe):
    """Transitions sampled in fp32, their log-probs recomputed under fp32 and under bf16 compute: the difference is a
    small share of the log-probs' own spread, and the PPO importance ratio exp(delta) stays within 1 +- 0.05, half of
    the clip range 0.1 (a ratio that noise alone pushed past 1 +- 0.1 would be clipped without any update)."""
    traj = sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, generator=torch.Generator().manual_seed(0))
    rows, cols = _all_transitions(traj)
    args = (tiny_pipe.scheduler, traj, rows, cols, 5.0, 1.0)
    with torch.no_grad():
        fp32 = transition_policy(tiny_pipe.unet, *args)[0]
        with compute_dtype("bf16"):
            bf16, mean, _ = transition_policy(tiny_pipe.unet, *args)
    assert torch.equal(fp32, traj.log_probs[rows, cols])  # fp32 recomputes exactly what sampling stored
    assert bf16.dtype == mean.dtype == torch.float32  # the DDIM step and log-prob in fp32
    delta = (bf16 - fp32).abs()
    n, k = traj.log_probs.shape
    spread = (traj.log_probs - traj.log_probs.mean(0)).std()  # across samples, within a step
    assert delta.max() > 1e-5, "bf16 compute changed nothing: the UNet did not run in bf16"
    assert delta.max() <= LOGP_MAX and delta.mean() <= LOGP_MEAN
    assert delta.mean() <= 0.15 * spread  # measured 0.04-0.06 of it
    ratio = (bf16 - fp32).exp()
    assert (ratio - 1).abs().max() <= 0.05 and (ratio - 1).abs().mean() <= 0.005


def test_bf16_sampling_is_close_to_fp32(tiny_pipe):
    """Same noise, same prompts: bf16 images differ from fp32 ones by a few thousandths; everything stored (latents,
    log-probs, images) is fp32; branch and tree sampling run under bf16 too."""
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    fp32 = sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, generator=gen())
    with compute_dtype("bf16"):
        bf16 = sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, generator=gen())
        branched = sample_branches(tiny_pipe, PROMPTS[:2], 2, 3, num_steps=6, generator=gen())
        tree = sample_tree(tiny_pipe, PROMPTS[:1], [(2, 2), (4, 2)], num_steps=6, generator=gen())
    diff = (bf16.images - fp32.images).abs()
    assert 0 < diff.max() <= IMAGE_MAX and diff.mean() <= IMAGE_MEAN
    for t in (bf16, branched, tree.leaves):
        assert {t.images.dtype, t.latents.dtype, t.next_latents.dtype, t.log_probs.dtype} == {torch.float32}
        assert torch.isfinite(t.log_probs).all()
    assert torch.equal(bf16.prompt_embeds, fp32.prompt_embeds)  # the text encoder stays fp32


class _AutocastRecorder:
    """torch.autocast, recording every region entered with bf16 (no region at all must open in fp32)."""

    def __init__(self, monkeypatch):
        self.bf16 = 0
        real = torch.autocast
        recorder = self

        def autocast(*args, **kwargs):
            if kwargs.get("dtype") == torch.bfloat16 and kwargs.get("enabled", True):
                recorder.bf16 += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch, "autocast", autocast)


def _one_stage(make_pipe, **kw):
    cfg = TrainerConfig.b2(
        num_steps=4,
        num_stages=1,
        split_start=2,
        prompts_per_stage=4,
        sample_batch_size=4,
        num_branches=2,
        train_batch_size=2,
        grad_accum=2,
        pos_threshold=0.0,
        neg_threshold=0.0,
        progress=False,
        **kw,
    )
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    log = [{k: v for k, v in m.items() if not k.endswith("_s")} for m in trainer.train()]  # not the timings
    return log, {n: p.detach().clone() for n, p in trainer.named_trainable().items()}


def test_fp32_default_is_unchanged(make_pipe, monkeypatch):
    """The default and an explicit dtype='fp32' open no autocast region and train to the same bits; a bf16 run of the
    same stage opens them and ends elsewhere (so the comparison can tell). The suite's existing trainer, sampling and
    experiment tests pass unchanged; before/after runs of four recipes and an evaluation matched to the bit."""
    rec = _AutocastRecorder(monkeypatch)
    log, weights = _one_stage(make_pipe)
    log_fp32, weights_fp32 = _one_stage(make_pipe, dtype="fp32")
    assert rec.bf16 == 0
    assert log == log_fp32 and all(torch.equal(weights[n], weights_fp32[n]) for n in weights)
    log_bf16, weights_bf16 = _one_stage(make_pipe, dtype="bf16")
    assert rec.bf16 > 0
    assert log_bf16[0]["reward_mean"] != log[0]["reward_mean"]
    assert any(not torch.equal(weights[n], weights_bf16[n]) for n in weights)
    assert {p.dtype for p in weights_bf16.values()} == {torch.float32}  # fp32 master weights
    assert all(math.isfinite(log_bf16[0][k]) for k in ("loss", "approx_kl", "grad_norm"))


def _start_of_update_log_ratio(make_pipe, fuse_lora: bool) -> torch.Tensor:
    cfg = TrainerConfig.b2(
        num_steps=6, num_stages=2, split_start=3, prompts_per_stage=4, sample_batch_size=4, num_branches=3,
        progress=False, dtype="bf16", lora_targets="all", lora_rank=8, fuse_lora=fuse_lora,
    )  # fmt: skip
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    with torch.no_grad():  # a trained adapter (the initial one is zero: fused and unfused would be the same weights)
        for p in trainer.trainable:
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    traj, _ = trainer.sample_stage(0)
    rows, cols = _all_transitions(traj)
    with torch.no_grad():
        log_ratio = trainer.policy_terms(traj, rows, cols)[0] - traj.log_probs[rows, cols]
    assert current_dtype() == "fp32"  # the trainer's bf16 region ends with the call
    return log_ratio.abs()


def test_bf16_trainer_recomputes_its_own_samples_log_probs(make_pipe):
    """In a bf16 run the update's first ratio exp(log p_new - log p_old) compares two bf16 computations of the same
    policy: sampled with the adapter fused into the weights (``fuse_lora``, the default), recomputed through the
    unfused adapter. bf16 rounds the fused weights differently from the base weights and the adapter apart, so the
    ratio starts off 1 by about as much as bf16 differs from fp32 (measured 0.026 here; fp32: 1.5e-6). Sampling
    through the unfused adapter (``fuse_lora=False``) computes the trained function itself (measured: exactly 0 on
    this CPU, whose bf16 kernels give each row the same result whatever the batch)."""
    fused = _start_of_update_log_ratio(make_pipe, fuse_lora=True)
    assert 0 < fused.max() <= LOGP_MAX
    assert _start_of_update_log_ratio(make_pipe, fuse_lora=False).max() < 0.5 * fused.max()


def test_bf16_on_a_cpu_without_it_is_an_error_that_names_the_fix(monkeypatch):
    from b2lib.experiments.experiment import ConfigError, RunConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    with pytest.raises(ValueError, match=r"dtype='bf16' needs a CPU with AVX512-BF16 or AMX .*avx512_bf16.*fp32'"):
        TrainerConfig.b2(dtype="bf16")
    with pytest.raises(ConfigError, match="dtype: dtype='bf16' needs a CPU with AVX512-BF16 or AMX"):
        RunConfig(dtype="bf16")
    TrainerConfig.b2(dtype="fp32")  # fp32 needs nothing
    assert RunConfig().dtype == "fp32"
    # no /proc/cpuinfo (macOS, Windows): torch's own probes decide
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    monkeypatch.setattr(precision, "_torch_probe", lambda name: False)
    assert "no /proc/cpuinfo" in precision.bf16_problem("cpu")
    monkeypatch.setattr(precision, "_torch_probe", lambda name: name == "_is_amx_tile_supported")
    assert precision.bf16_problem("cpu") is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.bf16_problem("cpu") is None
    assert "no GPU" in precision.bf16_problem("cuda")


def test_dtype_settings_are_validated_and_stay_out_of_old_fingerprints():
    from b2lib.experiments.experiment import ConfigError, RunConfig
    from b2lib.train import config_from_args
    from b2lib.training.trainer import ADDED_FIELDS

    assert "dtype" in ADDED_FIELDS and "dtype" not in TrainerConfig.b2().to_dict()
    assert TrainerConfig.b2(dtype="bf16").to_dict()["dtype"] == "bf16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainerConfig.b2(dtype="fp16")
    with pytest.raises(ValueError, match="mixed_precision='fp16'"):
        TrainerConfig.b2(dtype="bf16", mixed_precision="fp16")
    default = RunConfig().settings()
    assert "dtype" not in default["run"] and all("dtype" not in t for t in default["trainer"].values())
    bf16 = RunConfig(dtype="bf16")
    settings = bf16.settings()
    assert settings["run"]["dtype"] == "bf16" and all(t["dtype"] == "bf16" for t in settings["trainer"].values())
    assert bf16.trainer_config("b2", 0).dtype == "bf16"
    with pytest.raises(ConfigError, match="dtype: use one of"):
        RunConfig(dtype="float16")
    with pytest.raises(ConfigError, match="not in overrides"):
        RunConfig(overrides={"dtype": "bf16"})
    cfg, _ = config_from_args(["--dtype", "bf16", "--preset", "smoke"])
    assert cfg.dtype == "bf16" and config_from_args([])[0].dtype == "fp32"
    from b2lib.experiments.evalsettings import eval_settings

    assert eval_settings(bf16, "cpu", bertscore=False)["dtype"] == "bf16"


def test_compute_dtype_nests_and_none_inherits():
    assert current_dtype() == "fp32"
    with compute_dtype("bf16"):
        with compute_dtype(None):
            assert current_dtype() == "bf16"
        with compute_dtype("fp32"):
            assert current_dtype() == "fp32" and isinstance(precision.model_autocast("cpu"), contextlib.nullcontext)
        assert current_dtype() == "bf16" and isinstance(precision.model_autocast("cpu"), torch.autocast)
    assert current_dtype() == "fp32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        with compute_dtype("fp16"):
            pass


def test_rewards_return_fp32_scores_close_to_fp32_under_bf16():
    """The world's CLIPScore and BERTScore with their model forwards in bf16: float32 scores within 5e-3 of fp32
    (measured 1.3e-3-2e-3 and 1.5e-3, against score spreads of 0.13 and 0.15)."""
    import numpy as np

    from b2lib.world.models import load_bertscore, load_clip_score
    from b2lib.world.prompts import sample_scene
    from b2lib.world.scenes import caption, render_batch

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "counting") for _ in range(8)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    prompts = [caption(s) for s in scenes[1:] + scenes[:1]]  # mismatched captions: a spread of scores
    for metric in (load_clip_score(), load_bertscore()):
        fp32 = metric(images, prompts)
        with compute_dtype("bf16"):
            bf16 = metric(images, prompts)
        assert bf16.dtype == torch.float32
        assert 0 < (bf16 - fp32).abs().max() <= 5e-3


def test_dtype_benchmark_pairs_the_dtypes_and_tabulates_with_the_cpu_flags(tiny_pipe):
    """The speed comparison's pieces on the tiny pipeline: one callable timed under both dtypes (interleaved, each
    call seeing its own dtype), and the table it writes as ``dtype.csv`` (one row per phase, the CPU's flags)."""
    from b2lib.bench.dtype import DTYPE_COLUMNS, _pair, dtype_table

    seen = []

    def sample(r):
        seen.append(current_dtype())
        sample_trajectories(tiny_pipe, PROMPTS[:2], num_steps=2, generator=torch.Generator().manual_seed(0))

    block = {**_pair(sample, repeats=2, work=2, desc=None), "unit": "images"}
    assert seen == ["bf16", "fp32"] + ["bf16", "fp32", "fp32", "bf16"]  # warm-up, then A B, B A
    assert block["ratio"]["min"] <= block["ratio"]["median"] <= block["ratio"]["max"]
    result = {"size": "smoke", "machine": {"cpu_threads": 2}, "cpu": precision.cpu_info(), "sampling": block}
    table = dtype_table(result)
    assert list(table.columns) == list(DTYPE_COLUMNS) and list(table["phase"]) == ["sampling"]
    row = table.iloc[0]
    assert row["ratio_median"] == block["ratio"]["median"] and row["repeats"] == 2
    assert [row[k] for k in ("cpu_model", "avx512_bf16", "amx_bf16")] == [
        result["cpu"][k] for k in ("model", "avx512_bf16", "amx_bf16")
    ]
