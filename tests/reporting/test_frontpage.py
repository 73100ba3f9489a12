"""The front page is generated: its blocks equal a fresh render from ``results/``; the claim rule is the stated one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from b2lib.reporting.claims import EXTENSIONS, PAPER_CLAIMS, Health
from b2lib.reporting.frontpage import (
    Check,
    Claim,
    axis_table,
    check_readme,
    diff_table,
    fill_verdicts,
    format_diff,
    render_blocks,
    scorecard,
    update_readme,
    verdict_problems,
    verdicts,
)

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["template", "metric", "a", "b", "mean_a", "mean_b", "diff", "low", "high", "resolved", "split"]


def _comp(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def test_readme_numbers_equal_the_result_files():
    problems = check_readme(ROOT / "README.md", ROOT / "results")
    assert not problems, "\n".join(problems)


def test_every_claim_check_is_found_in_the_committed_results():
    blocks = render_blocks(ROOT / "results")
    assert set(blocks) == {
        "scorecard",
        "extensions",
        "recipe",
        "rule",
        "table1",
        "ablation",
        "compat",
        "trees",
        "sparse",
        "sparse_levers",
        "sparse_axis",
        "binary_study",
        "flow",
    }
    assert blocks["scorecard"].count("\n") == len(PAPER_CLAIMS) + 2  # header, rule, one line per claim, diversity
    assert blocks["extensions"].count("\n") == len(EXTENSIONS) + 1
    for name, block in blocks.items():
        assert block.count("\n") - 1 <= 12, f"{name} has more than 12 rows"


def test_format_diff_bolds_only_resolved():
    assert (
        format_diff({"diff": 0.0594, "low": 0.0153, "high": 0.1081, "resolved": True}) == "**+0.059 [+0.015, +0.108]**"
    )
    assert format_diff({"diff": -0.002, "low": -0.01, "high": 0.008, "resolved": False}) == "-0.002 [-0.010, +0.008]"


def test_scorecard_and_tables_from_a_synthetic_results_folder(tmp_path):
    (tmp_path / "s").mkdir()
    _comp(
        [
            ["counting", "judge_all_ok", "b2", "base", 0.4, 0.3, 0.1, 0.05, 0.15, True, "test"],
            ["counting", "judge_all_ok", "b2", "ddpo", 0.4, 0.38, 0.02, -0.03, 0.07, False, "test"],
            ["counting", "reward", "b2", "base", 0.8, 0.8, 0.0, -0.01, 0.01, False, "test"],
            ["counting", "bertscore", "b2", "base", 0.8, 0.8, 0.0, -0.01, 0.01, False, "test"],
        ]
    ).to_csv(tmp_path / "s" / "comparisons.csv", index=False)
    claims = (
        Claim(
            "base",
            "wins over base",
            (Check("s/comparisons.csv", "counting", "b2", "base", "judge_all_ok", "judge"),),
            "nb",
        ),
        Claim(
            "both",
            "wins over both",
            (
                Check("s/comparisons.csv", "counting", "b2", "base", "judge_all_ok", "vs base"),
                Check("s/comparisons.csv", "counting", "b2", "ddpo", "judge_all_ok", "vs ddpo"),
            ),
            "nb",
        ),
    )
    card = scorecard(tmp_path, claims, diversity=False)
    assert "| wins over base | **reproduced** | judge **+0.100 [+0.050, +0.150]** | ? | `nb` |" in card
    assert "| wins over both | **partly** |" in card
    (tmp_path / "s" / "run").mkdir()
    (tmp_path / "s" / "run" / "config.json").write_text('{"recipe": "coarse"}')
    assert "| coarse | `nb` |" in scorecard(tmp_path, claims, diversity=False)
    ext = scorecard(tmp_path, claims, diversity=False, part="extension")
    assert "| wins over base | **shown** |" in ext and "beyond the paper" in ext
    table = diff_table(tmp_path, "s/comparisons.csv", [("B² − base", "counting", "b2", "base")])
    assert (
        table.splitlines()[-1]
        == "| B² − base | +0.000 [-0.010, +0.010] | +0.000 [-0.010, +0.010] | **+0.100 [+0.050, +0.150]** |"
    )
    with pytest.raises(KeyError, match="expected one row"):
        diff_table(tmp_path, "s/comparisons.csv", [("x", "binding", "b2", "base")])
    with pytest.raises(FileNotFoundError, match="run the notebook"):
        diff_table(tmp_path, "nope.csv", [])


def test_update_then_check_round_trip_and_a_stale_page_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    names = render_blocks(ROOT / "results")
    readme.write_text("top\n" + "".join(f"<!-- frontpage:{n} -->\nold\n<!-- /frontpage:{n} -->\n" for n in names))
    assert len(check_readme(readme, ROOT / "results")) == len(names)  # every block stale
    assert update_readme(readme, ROOT / "results") == []
    assert check_readme(readme, ROOT / "results") == []
    readme.write_text(readme.read_text().replace("+0.", "+9.", 1))  # one typed-over number
    assert len(check_readme(readme, ROOT / "results")) == 1
    readme.write_text("no markers")
    assert update_readme(readme, ROOT / "results") == list(names)


def test_axis_table_one_row_per_trained_reward_densest_first(tmp_path):
    (tmp_path / "sparse_axis").mkdir()
    rows = []
    for reward, d in (("judge", 0.02), ("clip", 0.1)):  # written sparse first: the table still goes densest first
        for a, b in (("ddpo", "base"), ("b2", "base"), ("tree", "base"), ("b2", "ddpo"), ("tree", "b2")):
            rows.append(["counting", "judge_all_ok", a, b, 0.3, 0.3, d, d - 0.05, d + 0.05, d > 0.05, "test", reward])
    pd.DataFrame(rows, columns=COLUMNS + ["reward"]).to_csv(tmp_path / "sparse_axis" / "comparisons.csv", index=False)
    pd.DataFrame({"reward": ["clip", "judge"], "positive_rate": [1.0, 0.2637]}).to_csv(
        tmp_path / "sparse_axis" / "gain.csv", index=False
    )
    lines = axis_table(tmp_path).splitlines()
    assert lines[0].startswith("| trained on") and "| B² − DDPO |" in lines[0] and len(lines) == 4
    assert lines[2].startswith("| CLIPScore (1.00) | **+0.100 [+0.050, +0.150]** |")
    assert lines[3].startswith("| judge, binary (0.26) | +0.020 [-0.030, +0.070] |")
    with pytest.raises(KeyError, match="trained on clip"):  # a missing row is an error that names the reward
        axis_table(tmp_path, metric="reward")


def test_health_makes_a_claim_without_hits_inconclusive(tmp_path):
    (tmp_path / "s").mkdir()
    _comp([["counting", "judge_all_ok", "b2", "base", 0.3, 0.3, 0.0, -0.02, 0.02, False, "test"]]).to_csv(
        tmp_path / "s" / "comparisons.csv", index=False
    )
    pd.DataFrame({"method": ["b2", "ddpo"], "approx_kl": [1e-14, 1e-5], "rise_low": [0.01, 0.01]}).to_csv(
        tmp_path / "s" / "health.csv", index=False
    )
    check = (Check("s/comparisons.csv", "counting", "b2", "base", "judge_all_ok", "judge"),)
    still = Claim("still", "did not move", check, "nb", health=(Health("s/health.csv", "b2"),))
    moved = Claim("moved", "moved, no gain", check, "nb", health=(Health("s/health.csv", "ddpo"),))
    card = scorecard(tmp_path, (still, moved), diversity=False)
    assert "| did not move | **inconclusive** |" in card and "| moved, no gain | **not reproduced** |" in card
    # a sign control whose signal on the trained reward is resolved shows learning, whatever the trend says
    signs = pd.DataFrame({"method": ["b2", "b2"], "metric": ["reward", "judge_all_ok"], "signal_low": [0.01, -0.1]})
    signs.to_csv(tmp_path / "s" / "signs.csv", index=False)
    flat = pd.DataFrame({"method": ["b2"], "approx_kl": [1e-5], "rise_low": [-0.03]})
    flat.to_csv(tmp_path / "s" / "health_flat.csv", index=False)
    signed = Claim(
        "signed", "learned by the sign", check, "nb", health=(Health("s/health_flat.csv", "b2", "", "s/signs.csv"),)
    )
    unsigned = Claim("unsigned", "no sign control", check, "nb", health=(Health("s/health_flat.csv", "b2"),))
    card = scorecard(tmp_path, (signed, unsigned), diversity=False)
    assert "| learned by the sign | **not reproduced** |" in card and "| no sign control | **inconclusive** |" in card
    signs.assign(signal_low=[-0.01, 0.1]).to_csv(tmp_path / "s" / "signs.csv", index=False)
    assert "| learned by the sign | **inconclusive** |" in scorecard(tmp_path, (signed,), diversity=False)


def test_verdict_markers_are_filled_and_checked():
    found = {"flow": "inconclusive", "branch": "reproduced"}
    text = "B² on flows: <!-- verdict:flow -->shown<!-- /verdict -->; branch <!-- verdict:branch -->x<!-- /verdict -->"
    assert len(verdict_problems(text, found)) == 2
    filled = fill_verdicts(text, found)
    assert verdict_problems(filled, found) == []
    assert "<!-- verdict:flow -->inconclusive<!-- /verdict -->" in filled
    assert "unknown claim 'nope'" in verdict_problems("<!-- verdict:nope -->partly<!-- /verdict -->", found)[0]


def test_every_claim_has_a_unique_key_and_a_verdict():
    found = verdicts(ROOT / "results")
    keys = [c.key for c in PAPER_CLAIMS + EXTENSIONS]
    assert len(keys) == len(set(keys)) == len(found)
    assert set(found.values()) <= {"reproduced", "partly", "not reproduced", "inconclusive", "shown", "not shown"}


def test_the_sign_control_is_read_on_the_metric_the_runs_were_trained_on(tmp_path):
    from b2lib.reporting.frontpage import _Files  # the front page's reader of result files

    (tmp_path / "s").mkdir()
    pd.DataFrame({"method": ["b2", "b2"], "metric": ["reward", "judge_all_ok"], "signal_low": [-0.01, 0.02]}).to_csv(
        tmp_path / "s" / "sign.csv", index=False
    )
    files = _Files(tmp_path)
    assert not files.sign_learned(Health("s/h.csv", "b2", sign_control="s/sign.csv"))
    assert files.sign_learned(Health("s/h.csv", "b2", sign_control="s/sign.csv", sign_metric="judge_all_ok"))
