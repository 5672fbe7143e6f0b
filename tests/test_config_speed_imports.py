"""Config-only commands load neither torch nor transformers (bench/config_speed.py times them).

Each case runs the real CLI in a fresh interpreter and reports which heavy modules it loaded:
`check` and `audit` in every text format need only the recipe and config.json, `distill
--dry-run` describes the plan without opening hub data, and `build` of a same-dtype model
copies bytes. Also here: the two start-up savings that need their own check (the hub-cache
lookup without the hub client, the lark grammar cache).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from surgery import source
from tiny import write_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.boom"))
PAPER = [r for r in SHIPPED if not r.endswith("tiny.boom")]
HEAVY = ("torch", "transformers", "datasets", "networkx", "matplotlib", "huggingface_hub.file_download")

# Runs `surgery.cli.main` on each argv of a JSON list, stdout discarded, then prints the exit
# codes and which HEAVY modules the interpreter holds.
PROBE = f"""
import contextlib, json, os, sys
from surgery.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with open(os.devnull, "w") as out, contextlib.redirect_stdout(out):
        codes.append(main(argv))
print(json.dumps({{"codes": codes, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def probe(*argvs: list[str], env: dict | None = None) -> tuple[list[int], set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([list(map(str, a)) for a in argvs])],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    return report["codes"], set(report["loaded"])


def test_check_loads_no_model_library_and_no_graph_library():
    codes, loaded = probe(["check", *SHIPPED])
    assert codes == [0]
    assert loaded == set(), "check needs the recipe and config.json only"


def test_audit_text_formats_load_neither_torch_nor_transformers():
    formats = ("table", "markdown", "json", "yaml", "dot", "mermaid")
    codes, loaded = probe(*(["audit", "--format", f, "recipes/qwen3-8b.boom"] for f in formats),
                          *(["audit", "--format", "json", r] for r in PAPER))
    assert codes == [0] * (len(formats) + len(PAPER))
    assert loaded == {"networkx"}  # the graph's nodes and edges are part of json, yaml, dot, mermaid


def test_audit_drawing_loads_matplotlib_but_no_model_library(tmp_path):
    codes, loaded = probe(["audit", "--format", "svg", "-o", tmp_path / "g.svg", "recipes/tiny.boom"])
    assert codes == [0] and (tmp_path / "g.svg").read_text().startswith("<?xml")
    assert not loaded & {"torch", "transformers"}


@pytest.mark.parametrize("recipe", PAPER)
def test_distill_dry_run_is_offline_and_names_hub_data_without_opening_it(recipe):
    done = subprocess.run([sys.executable, "-m", "surgery", "distill", "--dry-run", recipe], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert 'data     hf "EleutherAI/the_pile_deduplicated" split train (streamed when training starts, ' \
           'not opened now), weight 1' in done.stdout
    assert "device   auto (" in done.stdout and "memory   about" in done.stdout
    codes, loaded = probe(["distill", "--dry-run", recipe])
    assert codes == [0] and not loaded & {"torch", "transformers", "datasets"}


def test_build_of_a_teacher_init_student_copies_bytes_without_torch(tmp_path, teachers):
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3"))
    codes, loaded = probe(["init-student", recipe], ["build", recipe, "--patch", "1", "--out", tmp_path / "out"])
    assert codes == [0, 0]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not loaded & {"torch", "transformers", "networkx"}


def test_hub_cache_lookup_agrees_with_huggingface_hub(tmp_path):
    from huggingface_hub import try_to_load_from_cache

    commit, other = "a" * 40, "b" * 40
    repo = tmp_path / "models--org--name"
    for sha in (commit, other):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "dev").write_text(other)
    missing = "c" * 40  # a snapshot known to lack config.json
    (repo / "snapshots" / missing).mkdir()
    (repo / ".no_exist" / missing).mkdir(parents=True)
    (repo / ".no_exist" / missing / "config.json").write_text("")
    (tmp_path / "models--org--empty").mkdir()
    for repo_id, revision in [("org/name", None), ("org/name", "main"), ("org/name", "dev"), ("org/name", other),
                              ("org/name", missing), ("org/name", "nope"), ("org/empty", None), ("org/none", None)]:
        theirs = try_to_load_from_cache(repo_id, "config.json", cache_dir=tmp_path, revision=revision)
        ours = source._from_hf_cache(repo_id, revision, cache_dir=tmp_path)
        assert (str(ours) if ours else None) == (theirs if isinstance(theirs, str) else None), (repo_id, revision)
    assert source._from_hf_cache("org/name", "dev", cache_dir=tmp_path).parent.name == other


def test_the_grammar_cache_lives_in_the_user_cache_directory(tmp_path):
    env = {"SURGERY_CACHE": str(tmp_path)}
    for _ in range(2):  # the first run writes the cache, the second reads it
        codes, _ = probe(["check", "recipes/tiny.boom"], env=env)
        assert codes == [0]
    assert [p.suffix for p in (tmp_path / "grammar").iterdir()] == [".lark"]


def test_the_registry_cache_is_read_without_yaml_and_equals_the_yaml(tmp_path):
    env = {"SURGERY_CACHE": str(tmp_path)}
    probe(["check", "recipes/tiny.boom"], env=env)  # writes the cache
    cached = list((tmp_path / "registry").iterdir())
    assert [p.suffix for p in cached] == [".json"]
    done = subprocess.run([sys.executable, "-c", "import sys; from surgery.cli import main; main(['check', "
                           "'recipes/tiny.boom']); print('yaml' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    assert done.stdout.splitlines()[-1] == "False"

    import yaml

    from surgery import arch
    parsed = [yaml.safe_load(p.read_text()) for p in sorted(arch.REGISTRY_DIR.glob("*.yaml"))]
    assert json.loads(cached[0].read_text())["entries"] == parsed


def test_an_edited_registry_file_is_parsed_again(tmp_path, monkeypatch):
    import shutil

    from surgery import arch
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    shutil.copytree(arch.REGISTRY_DIR, tmp_path / "architectures")
    monkeypatch.setattr(arch, "REGISTRY_DIR", tmp_path / "architectures")
    assert arch._entries() == arch._entries()  # the second from the cache
    llama = tmp_path / "architectures" / "llama.yaml"
    llama.write_text(llama.read_text().replace("name: llama", "name: llama-edited", 1))
    assert "llama-edited" in [entry["name"] for entry in arch._entries()]
    kept = sorted((tmp_path / "cache" / "registry").iterdir(), key=lambda p: "llama-edited" in p.read_text())
    assert len(kept) == 2 and "llama-edited" in kept[1].read_text()
    # A cache file that is not the one its name promises (cut short, or of other files) is not read.
    kept[1].write_text(kept[0].read_text())
    assert "llama-edited" in [entry["name"] for entry in arch._entries()]
    kept[1].write_text(kept[1].read_text()[:100])
    assert "llama-edited" in [entry["name"] for entry in arch._entries()]


def test_a_command_imports_its_own_module_and_help_lists_every_command():
    from surgery.cli import _commands

    done = subprocess.run([sys.executable, "-c", "import sys; from surgery.cli import main; main(['check', "
                           "'recipes/tiny.boom']); print(sorted(m for m in sys.modules if m.startswith("
                           "'surgery.commands.')))"], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.splitlines()[-1] == "['surgery.commands.check']"
    for argv in (["--help"], ["-h", "check"]):
        usage = subprocess.run([sys.executable, "-m", "surgery", *argv], capture_output=True, text=True, cwd=ROOT)
        # A command, then its help on the same line or the next: one without help swallows the next command.
        listed = re.findall(r"^    (\S+)\s+\S", usage.stdout, re.MULTILINE)
        assert listed == list(_commands()) and len(listed) == 13, argv


def test_lark_is_imported_without_regex_and_regex_still_imports_afterwards():
    done = subprocess.run([sys.executable, "-c", "import sys; import surgery.recipe.parse; import lark.utils; "
                           "loaded = 'regex' in sys.modules; import regex; "
                           "print(loaded, lark.utils._has_regex, regex.fullmatch(r'\\p{L}+', 'layer') is not None)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["False", "False", "True"], done.stderr
