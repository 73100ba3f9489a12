"""Several processes under `accelerate launch` (gloo on CPU): sampling split over processes, gradients synced."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
LAUNCH = [
    "accelerate",
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def test_two_processes_train_in_lockstep(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "ddp_train.py"
    proc = subprocess.run(LAUNCH + [str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 for r in ranks)
    assert ranks[0]["changed"] > 0
    # identical weights on both ranks: the gradients were averaged, whatever each rank kept
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    assert ranks[0]["images_seen"] == ranks[1]["images_seen"] == 2 * 2 * 2 * 3  # stages x procs x prompts x B


def test_main_job_cli_under_two_processes(tmp_path):
    cmd = LAUNCH + [
        "-m",
        "b2lib.train",
        "--template",
        "counting",
        "--preset",
        "smoke",  # the embedded world at toy size: every size from presets.SMOKE
        "--output-dir",
        str(tmp_path),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["code"] is None or len(summary["code"]["commit"]) == 40  # the code that produced the numbers
    assert {r["model"] for r in summary["eval"]} == {"base", "ddpo_seed0", "b2_seed0"}
    assert {(r["n_images"], r["n_prompts"]) for r in summary["eval"]} == {(4, 2)}  # the smoke preset's evaluation
    assert (tmp_path / "b2_seed0" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_half_precision_base_trains_fp32_lora(tmp_path):
    """Paper-scale setting on CPU: bf16 base weights + bf16 autocast; the LoRA keeps fp32 master weights."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bf16_train.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT dtypes=['torch.float32'] changed=True finite=True" in proc.stdout
