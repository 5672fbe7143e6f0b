"""The report: results.json / results.md rows and a readable curve.png."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from surgery.evaluate import report


def model(name, kind, depth, patched, params, ppl, acc, naive=None):
    scores = {"perplexity": ppl, "tokens": 1000,
              "tasks": {"next_line": {"acc,none": acc, "acc_stderr,none": 0.01, "acc_norm,none": 0.0, "samples": 50}}}
    return {"name": name, "kind": kind, "depth": depth, "patched": patched, "params": params, "bytes": 2 * params,
            "dir": f"/runs/{name}", "scores": scores,
            "naive": None if naive is None else {"dir": f"/runs/naive/{name}", "scores": {
                "perplexity": naive[0], "tokens": 1000, "tasks": {"next_line": {"acc,none": naive[1]}}}}}


@pytest.fixture
def evaluation():
    return {
        "recipe": "recipes/tiny.boom", "teacher": "assets/tiny-teacher", "dtype": "bf16",
        "perplexity": {"files": ["a.txt", "b.txt"], "seq": 128, "stride": 64}, "tasks": ["next_line"],
        "models": [  # deliberately not in size order
            model("teacher", "teacher", 12, [0, 1, 2, 3, 4, 5, 6], 9_000_000, 20.0, 0.60),
            model("7L", "student", 7, [], 6_000_000, 30.0, 0.40, naive=(400.0, 0.26)),
            model("10L", "interpolated", 10, [4, 5, 6], 7_800_000, 24.5, 0.51, naive=(60.0, 0.33)),
            model("8L", "interpolated", 8, [6], 6_600_000, 29.7, 0.43, naive=(250.0, 0.28)),
        ],
    }


def test_report_files_and_rows(evaluation, tmp_path):
    paths = report.write(evaluation, tmp_path / "report")
    assert [p.name for p in paths] == ["results.json", "results.md", "curve.png"]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["teacher", "7L", "10L", "8L"]
    assert results["summary"] == {"perplexity_falls_with_size": True,
                                  "worst_gain_over_naive_pruning": pytest.approx(1 - 24.5 / 60.0)}

    md = (tmp_path / "report" / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0] for r in rows] == ["| 7L", "| 8L", "| 10L", "| teacher"]  # by parameters
    header = md.splitlines()[md.splitlines().index(rows[0]) - 2]
    assert header == ("| model | layers | patched | params | size (bf16) | perplexity | perplexity, naive pruning | "
                      "next_line acc | next_line acc, naive pruning |")
    assert rows[1] == "| 8L | 8 | s6 | 6.6M | 13.2MB | 29.70 | 250.00 | 0.430 | 0.280 |"
    assert rows[3] == "| teacher | 12 | all | 9M | 18MB | 20.00 | — | 0.600 | — |"
    assert "at least 59% below naive pruning" in md

    image = matplotlib.image.imread(tmp_path / "report" / "curve.png")
    assert image.shape[0] > 300 and image.shape[1] > 2 * image.shape[0]  # two panels side by side


def test_summary_flags_a_bump(evaluation):
    evaluation["models"][3]["scores"]["perplexity"] = 31.0  # 8L worse than 7L by more than 2%
    assert report.summary(evaluation)["perplexity_falls_with_size"] is False
    evaluation["models"][3]["scores"]["perplexity"] = 30.5  # within 2%: noise
    assert report.summary(evaluation)["perplexity_falls_with_size"] is True


def test_report_without_perplexity(evaluation, tmp_path):
    evaluation["perplexity"] = None
    for m in evaluation["models"]:
        m["scores"]["perplexity"] = None
    report.write(evaluation, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "perplexity" not in md and "next_line acc" in md
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == {}
