"""lm-eval through HFLM on a tiny model directory, offline, with a local task; results cached."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from surgery.errors import SurgeryError  # noqa: E402
from surgery.evaluate import lmeval, suite  # noqa: E402
from surgery.evaluate.cache import ResultCache  # noqa: E402
from surgery.fingerprint import Digests  # noqa: E402
from surgery.recipe.parse import load  # noqa: E402
from tiny import write_recipe  # noqa: E402

pytest.importorskip("lm_eval")

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()
TASK_YAML = """task: tiny_next_word
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def items(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        picks = torch.randint(len(WORDS), (10,), generator=g).tolist()
        rows.append({"context": " ".join(WORDS[i] for i in picks[:6]), "choices": [WORDS[i] for i in picks[6:]],
                     "label": 0})
    return rows


def write_task(directory, rows):
    """A local multiple-choice task: pick the next word among four."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "items.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (directory / "tiny_next_word.yaml").write_text(TASK_YAML.format(data=data.resolve()))


def hand_choices(directory, rows):
    """Each item's most likely choice, scoring log-likelihoods directly as lm-eval defines them."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    chosen = []
    for row in rows:
        context = tok(row["context"], add_special_tokens=False)["input_ids"]
        lls = []
        for choice in row["choices"]:
            whole = tok(row["context"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            lls.append(sum(logp[t - 1, whole[t]].item() for t in range(len(context), len(whole))))
        chosen.append(max(range(4), key=lls.__getitem__))
    return chosen


@pytest.fixture
def setup(teachers, tmp_path):
    model_dir = teachers("qwen3", layers=2)
    rows = items()
    # Label 5 of the 8 scored items with this model's choice and 3 against it: accuracy is
    # exactly 5/8 when lm-eval scores this model the way the hand computation does.
    for i, (row, best) in enumerate(zip(rows, hand_choices(model_dir, rows))):
        row["label"] = best if i < 5 else (best + 1) % 4
    write_task(tmp_path / "tasks", rows)
    recipe = write_recipe(tmp_path / "r.boom", model_dir,
                          extra='evaluate {\n    tasks tiny_next_word\n    tasks_path "tasks"\n    limit 8\n}')
    evaluator = suite.Evaluator(load(recipe), ResultCache(tmp_path / "cache"), Digests(), device="cpu")
    return model_dir, evaluator


def test_local_task_runs_through_hflm_and_is_cached(setup, tmp_path, monkeypatch):
    model_dir, evaluator = setup
    scores = evaluator.score(model_dir).tasks["tiny_next_word"]
    assert scores["samples"] == 8
    assert scores["acc,none"] == pytest.approx(5 / 8)
    assert lmeval.primary_metric(scores) == ("acc", scores["acc,none"])

    def no_rerun(*args, **kwargs):
        raise AssertionError("lm-eval ran again for a cached model and task")

    monkeypatch.setattr(lmeval, "run_tasks", no_rerun)
    assert evaluator.score(model_dir).tasks["tiny_next_word"] == scores
    fresh = suite.Evaluator(evaluator.recipe, ResultCache(tmp_path / "cache"), Digests(), device="cpu")
    assert fresh.score(model_dir).tasks["tiny_next_word"] == scores  # the cache is on disk

    write_task(tmp_path / "tasks", items(seed=1))  # new items: the key changes, so lm-eval must run
    fresh = suite.Evaluator(evaluator.recipe, ResultCache(tmp_path / "cache"), Digests(), device="cpu")
    with pytest.raises(AssertionError, match="ran again"):
        fresh.score(model_dir)


def test_unknown_task_and_missing_path_are_clean_errors(tmp_path):
    write_task(tmp_path / "tasks", items())
    with pytest.raises(SurgeryError, match="no task `tiny_next_wrd`") as err:
        lmeval.Tasks(("tiny_next_wrd",), tmp_path / "tasks")
    assert "tiny_next_word" in err.value.hint
    with pytest.raises(SurgeryError, match="not a directory"):
        lmeval.Tasks(("tiny_next_word",), tmp_path / "nowhere")


def test_missing_lm_eval_is_a_clean_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_lm_eval)
    with pytest.raises(SurgeryError, match="need lm-eval") as err:
        lmeval.require()
    assert "surgery[eval]" in err.value.hint


def test_scores_are_shared_between_runs_by_model_content(setup, tmp_path, monkeypatch):
    """Another recipe, in another folder, scoring a byte-identical copy of the model reads the
    machine's shared cache: this is what lets several runs of one teacher score it once."""
    import shutil

    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "shared"))
    model_dir, first = setup
    first = suite.Evaluator(first.recipe, ResultCache(), Digests(), device="cpu")
    scores = first.score(model_dir).tasks["tiny_next_word"]
    assert list((tmp_path / "shared" / "scores").iterdir()), "scores go to $SURGERY_CACHE/scores"

    other = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "tasks", other / "tasks")
    copy = shutil.copytree(model_dir, other / "model")
    recipe = write_recipe(other / "r.boom", copy,
                          extra='evaluate {\n    tasks tiny_next_word\n    tasks_path "tasks"\n    limit 8\n}')

    def no_rerun(*args, **kwargs):
        raise AssertionError("lm-eval ran again for a model already scored")

    monkeypatch.setattr(lmeval, "run_tasks", no_rerun)
    second = suite.Evaluator(load(recipe), ResultCache(), Digests(), device="cpu")
    assert second.score(copy).tasks["tiny_next_word"] == scores

    # One changed byte in the weights is another model: scored afresh, never served the old score.
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="ran again"):
        suite.Evaluator(load(recipe), ResultCache(), Digests(), device="cpu").score(copy)


def test_a_score_names_the_device_kind_it_was_made_on(setup):
    _, evaluator = setup
    key = evaluator._key({"metric": "perplexity"})
    assert key == {"metric": "perplexity", "device": "cpu"}


def test_an_unwritable_score_cache_is_refused_before_scoring(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SurgeryError, match=r"cannot write the score cache .*cache/scores") as err:
        ResultCache().require_writable()
    assert "SURGERY_CACHE" in err.value.hint
