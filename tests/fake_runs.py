"""Fake run folders (per-image evaluation tables) for the tests of comparisons and reports: a base model and one
trained model whose per-image scores are given, on 8 prompts x 4 images."""

import json

import pandas as pd

PROMPTS = [f"prompt {i}" for i in range(8) for _ in range(4)]  # 8 prompts x 4 images


def fake_run(folder, sign, method, seed, base, trained):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"reward_sign": sign}))
    rows = []
    for label, meth, s, values in (("base", "base", None, base), (f"{method}_seed{seed}", method, seed, trained)):
        for i, (p, v) in enumerate(zip(PROMPTS, values)):
            rows.append(
                {
                    "model": label,
                    "method": meth,
                    "seed": s,
                    "split": "train",
                    "image": i,
                    "prompt": p,
                    "reward": v,
                    "judge_all_ok": float(v > 0.5),
                }
            )
    pd.DataFrame(rows).to_csv(folder / "eval_images.csv", index=False)
    return folder
