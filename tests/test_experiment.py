"""RunConfig: the binary judge reward option and the evaluation size (no model is loaded here)."""

import pytest
import torch

from b2lib.experiment import RunConfig, run_many


def test_eval_images_sets_images_per_prompt():
    cfg = RunConfig()
    assert cfg.n_per_prompt(16) == 32 and cfg.n_per_prompt(30) == 18 and cfg.n_per_prompt(128) == 4
    assert all(cfg.n_per_prompt(n) * n >= 512 for n in (16, 30, 128))
    assert RunConfig(eval_n_per_prompt=3).n_per_prompt(16) == 3


def test_reward_option_is_validated():
    assert RunConfig(reward="judge").reward == "judge"
    with pytest.raises(ValueError, match="'clip'"):
        RunConfig(reward="bert")
    with pytest.raises(ValueError, match="embedded"):
        RunConfig(reward="judge", preset="paper")


def test_judge_reward_is_binary_and_agrees_with_the_judge():
    import numpy as np

    from b2lib.world.evaluation import judge_reward
    from b2lib.world.scenes import caption, render_batch, sample_scene

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "counting") for _ in range(6)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    right = judge_reward(images, [caption(s) for s in scenes])
    wrong = judge_reward(images, [caption(s) for s in scenes[1:] + scenes[:1]])
    assert set(right.tolist()) | set(wrong.tolist()) <= {0.0, 1.0}
    assert right.mean() > wrong.mean() and right.mean() >= 0.8


def test_sign_control_and_device_options_are_validated():
    assert RunConfig(reward_sign=-1).reward_sign == -1
    with pytest.raises(ValueError, match="reward_sign"):
        RunConfig(reward_sign=0)
    with pytest.raises(ValueError, match="device"):
        RunConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            RunConfig(device="cuda")


def test_negated_reward_flips_the_sign():
    from b2lib.rewards import Negated

    images = torch.rand(3, 3, 8, 8)
    reward = lambda ims, prompts: ims.mean((1, 2, 3))  # noqa: E731
    assert torch.equal(Negated(reward)(images, ["a"] * 3), -reward(images, ["a"] * 3))


def test_run_many_rejects_clashing_folders(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        run_many([RunConfig()])
    with pytest.raises(ValueError, match="share an output_dir"):
        run_many([RunConfig(output_dir=str(tmp_path)), RunConfig(output_dir=str(tmp_path))])


def test_bad_run_config():
    with pytest.raises(ValueError, match=r"methods: unknown \['ppo'\]"):
        RunConfig(methods=("ppo",))
    with pytest.raises(ValueError, match="template: unknown 'animals'"):
        RunConfig(template="animals")
    with pytest.raises(ValueError, match="preset: unknown 'huge'"):
        RunConfig(preset="huge")
