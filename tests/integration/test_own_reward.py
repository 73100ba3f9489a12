"""A user's own reward and files: the recipe switch of ``TrainerConfig``, a reward that returns NaN, a saved LoRA
that was cut short. Each fault ends in one message that names the cause and the fix."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from trainer_helpers import TINY

from b2lib import B2Trainer, DDPOTrainer, RewardNotFiniteError, TrainerConfig
from b2lib.experiments.experiment import RunConfig, run_experiment
from b2lib.experiments.presets import RECIPES
from b2lib.experiments.reevaluate import add_eval_split, run_config
from b2lib.rewards.base import check_finite
from b2lib.training.checkpoint import LORA_FILE, BrokenLoraError, check_lora

PROMPTS = ["a red circle", "two blue squares"]


# ------------------------------------------------------------------------------------------------ the recipe switch
@pytest.mark.parametrize("method", ["b2", "ddpo"])
def test_the_recipe_switch_gives_the_runs_trainer_config(method):
    """``TrainerConfig.b2(recipe="coarse")`` is what ``RunConfig(recipe="coarse")`` trains: the same switches from
    the one table (``presets.RECIPES``), the rest of the fields equal."""
    build = getattr(TrainerConfig, method)
    switches = RECIPES["coarse"][method]
    assert switches and all(getattr(build(recipe="coarse"), k) == v for k, v in switches.items())
    for recipe in ("coarse", "paper"):
        run = RunConfig(preset="smoke", methods=(method,), recipe=recipe).trainer_config(method, 0)
        rest = {k: v for k, v in vars(run).items() if k not in switches}
        assert build(recipe=recipe, **rest) == run
    # the paper recipe adds nothing: the defaults as they were
    assert build(recipe="paper") == build()
    assert any(getattr(build(), k) != v for k, v in switches.items())
    # overrides still win over the recipe
    assert build(recipe="coarse", explore_grid=4).explore_grid == 4


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown recipe 'rough'.*coarse.*paper"):
        TrainerConfig.b2(recipe="rough")


# -------------------------------------------------------------------------------------------- a reward returning NaN
def _small(**kw) -> dict:
    return dict(
        num_steps=4,
        split_start=2,
        num_stages=2,
        prompts_per_stage=4,
        sample_batch_size=2,
        train_batch_size=2,
        grad_accum=1,
        epochs_per_stage=1,
        progress=False,
        **kw,
    )


def nan_for_blue(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A reward with a bug: the log of a ratio that is 0 for the 'blue' prompts' images."""
    ratio = torch.tensor([0.0 if "blue" in p else 1.0 for p in prompts])
    return torch.log(ratio) * 0.0  # -inf * 0 = NaN


@pytest.mark.parametrize("trainer_cls", [B2Trainer, DDPOTrainer])
def test_a_nan_reward_at_the_first_stage_is_named_as_the_reward_functions_fault(make_pipe, tmp_path, trainer_cls):
    cfg = TrainerConfig.b2(**_small(num_branches=2)) if trainer_cls is B2Trainer else TrainerConfig.ddpo(**_small())
    prompts = ["two blue squares"] * 3 + ["a red circle"]
    trainer = trainer_cls(make_pipe(), nan_for_blue, prompts, cfg)
    with pytest.raises(RewardNotFiniteError) as caught:
        trainer.train(checkpoint_dir=tmp_path / "checkpoints")
    message = str(caught.value)
    assert "\n" not in message and "non-finite scores (NaN)" in message and "at stage 0" in message
    assert "'two blue squares'" in message and "'a red circle'" not in message
    assert "fix the reward function" in message and "nothing was trained yet" in message
    assert "lower lr" not in message and "lr / 10" not in message  # the advice for a diverged model is not given
    assert isinstance(caught.value, FloatingPointError)  # callers catching the old type still catch it
    assert trainer.stage == 0 and not list((tmp_path / "checkpoints").glob("stage_*"))


def test_the_count_and_the_kind_of_non_finite_scores_are_told():
    images = torch.rand(4, 3, 8, 8)
    with pytest.raises(RewardNotFiniteError, match=r"\(inf\) for 2 of 4 images at stage 3.*previous stage's"):
        check_finite(torch.tensor([1.0, float("inf"), 0.0, float("inf")]), images, list("abcd"), "reward_fn", 3)
    check_finite(torch.zeros(4), images, list("abcd"), "reward_fn", 0)  # finite: nothing raised


def test_non_finite_images_are_the_models_fault_not_the_rewards():
    """A diverged model decodes NaN images, and any reward of them is NaN: that keeps the learning-rate advice."""
    images = torch.rand(2, 3, 8, 8)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="last good state") as caught:
        check_finite(torch.tensor([0.0, float("nan")]), images, ["a", "b"], "reward_fn", 5)
    assert not isinstance(caught.value, RewardNotFiniteError)


# ------------------------------------------------------------------------------------------------ a truncated LoRA
def _lora_folder(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    weights = {"unet.a.lora_A.weight": torch.randn(4, 16), "unet.a.lora_B.weight": torch.zeros(16, 4)}
    save_file(weights, str(folder / LORA_FILE))
    return folder


@pytest.mark.parametrize("cut", ["tail", "header", "empty"])
def test_a_truncated_lora_file_is_named_with_the_fix(tmp_path, cut):
    folder = _lora_folder(tmp_path)
    assert check_lora(folder) == folder / LORA_FILE
    data = (folder / LORA_FILE).read_bytes()
    (folder / LORA_FILE).write_bytes({"tail": data[:-20], "header": data[:12], "empty": b""}[cut])
    with pytest.raises(BrokenLoraError, match=rf"{LORA_FILE} is truncated or corrupt .*save it again"):
        check_lora(folder)


def test_a_lora_folder_without_its_file_is_named(tmp_path):
    (tmp_path / "lora").mkdir()
    with pytest.raises(BrokenLoraError, match=f"holds no {LORA_FILE}"):
        check_lora(tmp_path / "lora")


def test_a_truncated_lora_in_a_finished_run_is_named_and_the_rerun_it_names_writes_it_again(tmp_path):
    run = tmp_path / "run"
    run_experiment(RunConfig(**TINY, output_dir=str(run)), progress=False)
    lora = run / "b2_seed0" / "lora" / LORA_FILE
    good = lora.read_bytes()
    lora.write_bytes(good[: len(good) // 2])  # a copy cut short

    with pytest.raises(BrokenLoraError) as caught:
        add_eval_split(run, "train", progress=False)
    message = str(caught.value)
    assert str(lora) in message and "truncated or corrupt" in message
    assert "resume=True" in message and "b2_seed0 resumes at its last checkpoint" in message
    assert run_config(run).eval_splits == ("test",)  # nothing was added

    # the advice works: the rerun resumes at the last stage and writes the same LoRA again
    run_experiment(dataclasses.replace(run_config(run), resume=True), progress=False)
    assert lora.read_bytes() == good
    assert not add_eval_split(run, "train", progress=False).empty

    # without checkpoints to export from, the fix is to train the run over
    lora.write_bytes(b"")
    shutil.rmtree(run / "b2_seed0" / "checkpoints")
    with pytest.raises(BrokenLoraError, match=r"holds no checkpoint .*resume=False \(command line: --no-resume"):
        check_lora(lora.parent, run_dir=run)


def test_a_reward_in_ten_lines_trains(make_pipe):
    """The reward contract of docs/library.md as a test: images (N, 3, H, W) in [0, 1] and N prompts in, N scores
    out; the trainer runs a stage on it and logs its mean."""

    def blueness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r, g, b = images.unbind(dim=1)
        return (b - (r + g) / 2).mean(dim=(1, 2))

    trainer = B2Trainer(make_pipe(), blueness, PROMPTS, TrainerConfig.b2(recipe="coarse", **_small(num_branches=2)))
    m = trainer.train_stage()
    assert -1 <= m["reward_mean"] <= 1 and m["images"] == 8


# --------------------------------------------------------------------------------------------- the documentation
ROOT = Path(__file__).resolve().parents[2]
#: what shrinks the library page's examples to seconds: (text in the page, text run instead); each must be found
SHRINK = [
    ("num_stages=20,", "num_stages=1,"),
    ("num_steps=20,", "num_steps=4,"),
    ("split_start=10,", "split_start=2,"),
    ('"num_stages": 10', '"num_stages": 1'),
    ("num_inference_steps=20", "num_inference_steps=4"),
]
#: the paper-scale example needs a GPU and the hub: the world's pipeline and CLIP stand in, at the toy size
PAPER = [
    ('"CompVis/stable-diffusion-v1-4", torch_dtype=torch.float16, device="cuda"', '"b2lib/world/weights/pipeline"'),
    (
        'ClipScore.from_pretrained("ViT-H-14", "laion2b_s32b_b79k", device="cuda", precision="fp16")',
        '__import__("b2lib.world.models", fromlist=["models"]).load_clip_score()',
    ),
    (
        'TrainerConfig.b2(mixed_precision="fp16")',
        "TrainerConfig.b2(num_stages=1, num_steps=4, split_start=2, prompts_per_stage=2, num_branches=2)",
    ),
]


def test_the_library_pages_examples_run(tmp_path, monkeypatch):
    """Every python block of docs/library.md runs, in order and in one namespace, shrunk to one stage of a 4-step
    chain (the model paths are the repository's; the LoRAs go to a temporary folder)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "library.md").read_text(), re.S)
    text = "\n".join(blocks)
    missing = [old for old, _ in SHRINK + PAPER if old not in text]
    assert not missing, f"docs/library.md changed: update SHRINK/PAPER here for {missing}"
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        for old, new in SHRINK + PAPER + [('"my_run/', f'"{tmp_path}/my_run/')]:
            block = block.replace(old, new)
        exec(compile(block, f"docs/library.md block {i}", "exec"), namespace)
    assert namespace["images"].shape == (1, 3, 64, 64) and 0 <= float(namespace["images"].min())
    assert (tmp_path / "my_run" / "flow" / "b2" / "lora" / LORA_FILE).is_file()
    assert len(namespace["trainer"].log) == 1  # the paper-scale block trained its stage
