"""`surgery compare`: several runs' evaluation records as one table and one figure."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from recipe_text import write as write_recipe
from surgery.cli import main
from surgery.errors import SurgeryError
from surgery.evaluate import compare

TASK = "next_line"


def model(name, kind, depth, patched, params, ppl, acc, naive=None):
    tasks = {} if acc is None else {TASK: {"acc,none": acc, "acc_stderr,none": 0.03, "acc_norm,none": 0.1}}
    return {"name": name, "kind": kind, "depth": depth, "patched": patched, "params": params, "bytes": 4 * params,
            "dir": f"/m/{name}", "scores": {"perplexity": ppl, "tokens": 1000, "tasks": tasks},
            "naive": None if naive is None else {"dir": f"/m/naive/{name}", "scores": {
                "perplexity": naive[0], "tokens": 1000, "tasks": {TASK: {"acc,none": naive[1]}}}}}


def evaluation(recipe, models, tasks=(TASK,), perplexity=True):
    return {"recipe": recipe, "teacher": "t", "dtype": "fp32",
            "perplexity": {"files": ["a.txt", "b.txt"], "seq": 256, "stride": 256} if perplexity else None,
            "tasks": list(tasks), "limit": None, "models": models}


def five_layers():  # a 5-layer student of a 12-layer teacher, blocks of three
    return evaluation("recipes/five.boom", [
        model("teacher", "teacher", 12, [0, 1, 2, 3, 4], 10_500_000, 73.87, 0.305),
        model("student", "student", 5, [], 4_980_000, 87.16, 0.290, naive=(341.55, 0.260)),
        model("8L", "interpolated", 8, [2, 3], 7_350_000, 80.61, 0.310, naive=(201.95, 0.270)),
    ])


def seven_layers():  # every other layer: 7 layers, a size step per two teacher layers
    return evaluation("recipes/seven.boom", [
        model("student", "student", 7, [], 6_560_000, 90.0, 0.280, naive=(225.15, 0.250)),
        model("8L", "interpolated", 8, [4, 5, 6], 8_390_000, 95.5, 0.300, naive=(201.95, 0.270)),
        model("10L", "interpolated", 10, [2, 3, 4, 5, 6], 9_970_000, 81.0, 0.300, naive=(101.65, 0.290)),
        model("teacher", "teacher", 12, [0, 1, 2, 3, 4, 5, 6], 10_500_000, 73.87, 0.305),
    ])


def run_dir(tmp_path, name, record):
    """A run directory as the evaluate stage leaves it: RUN/evaluation/evaluation.json."""
    d = tmp_path / name
    (d / "evaluation").mkdir(parents=True)
    (d / "evaluation" / "evaluation.json").write_text(json.dumps(record))
    return d


def rows(md: str, first: str) -> list[list[str]]:
    """The body rows of the table whose header starts with `| first |`, as lists of cells."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return body


def test_runs_of_different_depths(tmp_path):
    five, seven = run_dir(tmp_path, "five", five_layers()), run_dir(tmp_path, "seven", seven_layers())
    runs = compare.load([str(five), str(seven)])
    assert compare.missing(runs) == []
    paths = compare.write(runs, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.md", "compare.png", "compare.svg"]

    md = (tmp_path / "out" / "compare.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run | model"))
    assert header == ("| run | model | layers | patched | params | perplexity | perplexity, naive pruning | "
                      "next_line acc | next_line acc, naive pruning |")
    assert rows(md, "run | model") == [
        ["five", "student", "5", "none", "4.98M", "87.16", "341.55", "0.290", "0.260"],
        ["five", "8L", "8", "s2,s3", "7.35M", "80.61", "201.95", "0.310", "0.270"],
        ["five", "teacher", "12", "all", "10.5M", "73.87", "—", "0.305", "—"],
        ["seven", "student", "7", "none", "6.56M", "90.00", "225.15", "0.280", "0.250"],
        ["seven", "8L", "8", "s4,s5,s6", "8.39M", "95.50", "201.95", "0.300", "0.270"],
        ["seven", "10L", "10", "s2,s3,s4,s5,s6", "9.97M", "81.00", "101.65", "0.300", "0.290"],
        ["seven", "teacher", "12", "all", "10.5M", "73.87", "—", "0.305", "—"],
    ]
    # seven's 8L is worse than its student by 6%: the curve does not fall; its margins are 60%, 53%, 20%.
    assert rows(md, "run | recipe") == [
        ["five", "recipes/five.boom", "5", "5, 8, 12", "yes", "60.1%"],
        ["seven", "recipes/seven.boom", "7", "7, 8, 10, 12", "no", "20.3%"],
    ]
    assert "Perplexity: 2 files, seq 256, stride 256" in md and "Missing" not in md

    png = matplotlib.image.imread(tmp_path / "out" / "compare.png")
    assert png.shape[0] > 400 and png.shape[1] > png.shape[0]
    assert png[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    svg = (tmp_path / "out" / "compare.svg").read_text()
    assert svg.startswith("<?xml") and svg.rstrip().endswith("</svg>")
    # The legend names each run, and the two runs' different baselines apart.
    for text in ("five", "seven", "naive pruning (five)", "naive pruning (seven)", "teacher"):
        assert f"<!-- {text} -->" in svg


def test_runs_sharing_a_baseline_share_one_dashed_line(tmp_path):
    runs = compare.load([str(run_dir(tmp_path, "a", five_layers())), str(run_dir(tmp_path, "b", five_layers()))])
    svg = compare.plot(runs, "svg").decode()
    assert "<!-- naive pruning (a, b) -->" in svg and "<!-- naive pruning (a) -->" not in svg


def test_a_missing_metric_and_missing_scores_are_named(tmp_path, capsys):
    five = five_layers()
    five["models"][2]["scores"]["perplexity"] = None  # 8L was never scored
    seven = seven_layers()
    seven["tasks"] = []  # its evaluate block has no tasks
    for m in seven["models"]:
        m["scores"]["tasks"] = {}
        if m["naive"]:
            m["naive"]["scores"]["tasks"] = {}
    seven["models"][1]["naive"]["scores"]["perplexity"] = None
    a, b = run_dir(tmp_path, "five", five), run_dir(tmp_path, "seven", seven)

    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    notes = ["five: 8L has no perplexity score",
             "seven: no next_line acc (its evaluate block does not ask for it)",
             "seven: naive pruning at 8L has no perplexity score"]
    assert err.splitlines()[:3] == [f"note: {n}" for n in notes]
    assert out == (tmp_path / "out" / "compare.md").read_text()
    assert out.endswith("Missing:\n\n" + "".join(f"- {n}\n" for n in notes))
    body = rows(out, "run | model")
    assert body[1] == ["five", "8L", "8", "s2,s3", "7.35M", "—", "201.95", "0.310", "0.270"]
    assert body[4] == ["seven", "8L", "8", "s4,s5,s6", "8.39M", "95.50", "—", "—", "—"]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "compare.svg").stat().st_size > 10_000


def test_a_single_run_from_its_recipe(tmp_path, capsys):
    recipe = write_recipe(tmp_path, """
        boom 1
        teacher "t" {
            dtype fp32
        }
        student "runs/solo/student" {
            keep 0, 2, 4, 5
        }
        evaluate {
            perplexity text "held-out.txt"
            baseline naive_pruning
            report "elsewhere/report"
        }
    """)
    # The record lies in the run directory, the student's parent, wherever the report went.
    run_dir(tmp_path, "runs/solo", evaluation(str(recipe), five_layers()["models"], tasks=()))
    assert main(["compare", str(recipe), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert err.count("note:") == 0 and err.count("wrote") == 3
    assert rows(out, "run | model")[0] == ["r", "student", "5", "none", "4.98M", "87.16", "341.55"]
    assert rows(out, "run | recipe") == [["r", str(recipe), "5", "5, 8, 12", "yes", "60.1%"]]
    for name in ("compare.png", "compare.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000


def test_a_run_without_the_baseline_or_perplexity(tmp_path):
    bare = five_layers()
    bare["perplexity"] = None
    for m in bare["models"]:
        m["scores"]["perplexity"], m["naive"] = None, None
    runs = compare.load([str(run_dir(tmp_path, "bare", bare))])
    assert compare.missing(runs) == ["bare: no naive-pruning baseline (`baseline naive_pruning` in its evaluate block)"]
    # Nothing to plot: the table alone.
    assert [p.name for p in compare.write(runs, tmp_path / "out")] == ["compare.md"]


def test_a_report_folder_counts_as_a_run(tmp_path):
    d = tmp_path / "report"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(dict(five_layers(), summary={})))
    [run] = compare.load([str(d)])
    assert run.label == "report" and run.path == d / "results.json"


def test_a_run_with_no_evaluation_is_an_error_naming_it(tmp_path, capsys):
    good = run_dir(tmp_path, "good", five_layers())
    (tmp_path / "unscored").mkdir()
    with pytest.raises(SurgeryError) as raised:
        compare.load([str(good), str(tmp_path / "unscored")])
    unscored = tmp_path / "unscored"
    assert raised.value.message == f"no evaluation for {unscored} (no {unscored / 'evaluation' / 'evaluation.json'})"
    assert main(["compare", str(good), str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no recipe or run directory {tmp_path / 'nowhere'}\n  hint: ")
    assert "Traceback" not in err


def test_same_names_are_told_apart_by_their_paths(tmp_path):
    a = run_dir(tmp_path, "x/demo", five_layers())
    b = run_dir(tmp_path, "y/demo", seven_layers())
    assert [r.label for r in compare.load([str(a), str(b)])] == [str(a), str(b)]


def test_out_is_a_folder_of_its_own_and_a_user_folder_is_never_replaced(tmp_path, capsys):
    run = str(run_dir(tmp_path, "five", five_layers()))
    out = tmp_path / "out"
    assert main(["compare", run, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "compare.png", "compare.svg", "manifest.json"]
    assert main(["compare", run, "--out", str(out)]) == 0  # its own folder: replaced whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("mine")
    capsys.readouterr()
    assert main(["compare", run, "--out", str(mine)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: the compare folder {mine} is a folder surgery did not write, and compare "
                                "replaces it whole", "  hint: give --out a new or empty folder"], err
    assert [p.name for p in mine.iterdir()] == ["compare.md"] and (mine / "compare.md").read_text() == "mine"
