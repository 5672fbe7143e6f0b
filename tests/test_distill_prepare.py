"""The token cache (`surgery prepare`): the same rows as the stream, shared by recipes over the
same data, resumable after kill -9, read by position on each rank, and hub datasets offline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distill_support import distill_recipe, documents, jsonl_corpus, text_corpus

from surgery.compile import compile_file
from surgery.distill import data, feed, parallel, shards
from surgery.errors import SurgeryError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}
ONE = parallel.World(0, 1, 0, None)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SURGERY_CACHE", str(root))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return root / "tokens"


@pytest.fixture(scope="module")
def tokenizer(teachers):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teachers("qwen3"))


def _compiled(directory: Path, teacher: Path, body: str):
    directory.mkdir(parents=True, exist_ok=True)
    return compile_file(distill_recipe(directory, teacher, body))


def _prepared(directory, teacher, body, **kw):
    compiled = _compiled(directory, teacher, body)
    shards.prepare(compiled, progress=False, **kw)
    rows = feed.open_rows(compiled, ONE)
    assert isinstance(rows, feed.CachedRows)
    return compiled, rows


def _streamed(compiled, tokenizer):
    return data.Corpus(compiled.recipe, tokenizer)


MIXED = """data jsonl "a.jsonl" weight 2
data text "b/*.txt"
validation 15%
seq {seq}
pack {pack}
steps 1
seed 3"""


@pytest.mark.parametrize("pack,seq", [("yes", 16), ("no", 12)])
def test_cache_rows_equal_the_stream_row_by_row(tmp_path, teachers, tokenizer, pack, seq):
    # Two sources mixed by weight, a jsonl file with blank and empty-text lines, an empty text
    # file, documents longer than a row, held-out documents: several epochs of each.
    docs = documents(40, seed=1, words=(2, 30))
    lines = [json.dumps({"text": d}) for d in docs]
    lines[5:5] = ["", "   ", json.dumps({"text": ""})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    text_corpus(tmp_path / "b", documents(9, seed=2, words=(20, 60)))
    (tmp_path / "b" / "empty.txt").write_text("  \n")
    body = MIXED.format(seq=seq, pack=pack)
    compiled, cached = _prepared(tmp_path, teachers("qwen3"), body)
    stream = _streamed(compiled, tokenizer)
    got, want = cached.take(300), stream.train.take(300)
    assert max(p.epoch for p in stream.train.packers) >= 2
    assert np.array_equal(got.lengths, want.lengths)
    assert np.array_equal(got.tokens, want.tokens)
    assert pack == "yes" or (want.lengths < seq).any()
    val_got, val_want = cached.validation(50), stream.validation(50)
    assert 3 < len(val_want) < 50
    assert np.array_equal(val_got.tokens, val_want.tokens) and np.array_equal(val_got.lengths, val_want.lengths)


def test_validation_text_comes_from_its_own_cache(tmp_path, teachers, tokenizer):
    text_corpus(tmp_path / "c", documents(12, seed=4))
    text_corpus(tmp_path / "v", documents(6, seed=5))
    body = 'data text "c/*.txt"\nvalidation text "v/*.txt"\nseq 8\nsteps 1'
    compiled, cached = _prepared(tmp_path, teachers("qwen3"), body)
    stream = _streamed(compiled, tokenizer)
    assert len(shards.status(compiled).directories) == 2
    assert np.array_equal(cached.validation(40).tokens, stream.validation(40).tokens)
    assert np.array_equal(cached.take(50).tokens, stream.train.take(50).tokens)


def test_a_second_recipe_over_the_same_data_reuses_the_cache(tmp_path, teachers, cache):
    docs = documents(30, seed=6)
    jsonl_corpus(tmp_path / "one" / "c.jsonl", docs)
    jsonl_corpus(tmp_path / "two" / "elsewhere.jsonl", docs)  # same content, another path
    first = _compiled(tmp_path / "one", teachers("qwen3"), 'data jsonl "c.jsonl"\nseq 8\nsteps 1')
    second = _compiled(tmp_path / "two", teachers("qwen3"),
                       'data jsonl "elsewhere.jsonl"\nseq 64\npack no\nsteps 3\nseed 9')
    assert not shards.status(first).complete
    shards.prepare(first, progress=False)
    status = shards.status(second)
    assert status.complete and status == shards.status(first)
    stamp = (status.directories[0] / "manifest.json").stat().st_mtime_ns
    shards.prepare(second, progress=False)  # nothing to do
    assert (status.directories[0] / "manifest.json").stat().st_mtime_ns == stamp
    # Another teacher with the same tokenizer files shares it; another tokenizer, or other content, does not.
    body = f'data jsonl "{tmp_path}/one/c.jsonl"\nseq 8\nsteps 1'
    assert shards.status(_compiled(tmp_path / "three", teachers("gpt2"), body)).key == status.key
    other = _compiled(tmp_path / "four", REPO / "recipes" / "assets" / "tiny-teacher", body)
    assert shards.status(other).key != status.key
    jsonl_corpus(tmp_path / "two" / "elsewhere.jsonl", docs[:-1])
    assert not shards.status(second).complete
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [status.directories[0].name]


def test_shards_hold_uint16_tokens_and_an_index(tmp_path, teachers, tokenizer):
    docs = documents(20, seed=7)
    jsonl_corpus(tmp_path / "c.jsonl", docs)
    compiled, _ = _prepared(tmp_path, teachers("qwen3"), 'data jsonl "c.jsonl"\nseq 8\nsteps 1')
    directory = shards.status(compiled).directories[0]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["done"] and len(manifest["shards"]) == 1
    tokens = np.fromfile(directory / "00000.tokens", dtype=np.uint16)
    index = np.load(directory / "00000.docs.npy")
    expected = data.Encoder(tokenizer)(docs)
    assert index["length"].tolist() == [len(x) for x in expected]
    assert np.array_equal(tokens, np.concatenate(expected))
    assert index["hash"].tolist() == [data.document_hash(d) for d in docs]


def test_position_resumes_in_place_and_from_a_streamed_checkpoint(tmp_path, teachers, tokenizer):
    jsonl_corpus(tmp_path / "a.jsonl", documents(12, seed=1))
    text_corpus(tmp_path / "b", documents(5, seed=2))
    body = 'data jsonl "a.jsonl" weight 2\ndata text "b/*.txt"\nvalidation 10%\nseq 16\nsteps 1'
    compiled, whole = _prepared(tmp_path, teachers("qwen3"), body)
    expected = whole.take(120).tokens
    first = feed.open_rows(compiled, ONE)
    head = first.take(37).tokens
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"read": "cache", "rows": 37, "sources": state["sources"]}
    again = feed.open_rows(compiled, ONE)
    again.load_state_dict(state)
    assert np.array_equal(np.concatenate([head, again.take(83).tokens]), expected)
    # A run that streamed its first rows goes on from the cache with the next row.
    stream = _streamed(compiled, tokenizer)
    stream.train.take(37)
    converted = feed.open_rows(compiled, ONE)
    converted.load_state_dict(json.loads(json.dumps(stream.train.state_dict())))
    assert converted.state_dict() == state
    assert np.array_equal(converted.take(83).tokens, expected[37:])


def test_two_ranks_read_disjoint_rows_that_make_the_one_rank_stream(tmp_path, teachers):
    jsonl_corpus(tmp_path / "a.jsonl", documents(25, seed=1))
    text_corpus(tmp_path / "b", documents(7, seed=2, words=(40, 80)))
    body = 'data jsonl "a.jsonl" weight 2\ndata text "b/*.txt"\nvalidation 10%\nseq 16\npack no\nsteps 1'
    compiled, one = _prepared(tmp_path, teachers("qwen3"), body)
    ranks = [feed.open_rows(compiled, parallel.World(r, 2, r, None)) for r in range(2)]
    for step in range(6):
        whole = one.take(8)
        parts = [r.take(8) for r in ranks]
        assert all(p.local and len(p.tokens) == 4 for p in parts)
        assert all(np.array_equal(p.lengths, whole.lengths) for p in parts)  # every row's length, for the loss
        assert np.array_equal(np.concatenate([p.part(r, 2).tokens for r, p in enumerate(parts)]), whole.tokens)
        assert [len(p.part(r, 2)) for r, p in enumerate(parts)] == [4, 4]
    # The position is global: a checkpoint of two ranks resumes on one, at the same row.
    single = feed.open_rows(compiled, ONE)
    single.load_state_dict(ranks[1].state_dict())
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()
    assert np.array_equal(single.take(8).tokens, one.take(8).tokens)


@pytest.mark.parametrize("ahead", [True, False], ids=["background thread", "in the step"])
def test_feed_gives_the_rows_in_order_with_the_position(tmp_path, teachers, ahead):
    jsonl_corpus(tmp_path / "a.jsonl", documents(25, seed=1))
    compiled, rows = _prepared(tmp_path, teachers("qwen3"), 'data jsonl "a.jsonl"\nseq 16\nsteps 1')
    reference = feed.open_rows(compiled, ONE)
    batches = feed.Feed(rows, 4, 5, ahead=ahead)
    try:
        for _ in range(5):
            got, position = next(batches)
            assert np.array_equal(got.tokens, reference.take(4).tokens)
            assert position == reference.state_dict()
        if not ahead:
            with pytest.raises(StopIteration):
                next(batches)
    finally:
        batches.close()


@pytest.mark.parametrize("ahead", [True, False], ids=["background thread", "in the step"])
def test_feed_raises_the_readers_error_in_the_training_thread(tmp_path, teachers, ahead):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text(" ")
    compiled, rows = _prepared(tmp_path, teachers("qwen3"),
                               'data text "e/*.txt"\nvalidation text "e/a.txt"\nseq 16\nsteps 1')
    batches = feed.Feed(rows, 4, 5, ahead=ahead)
    with pytest.raises(SurgeryError, match='text "e/\\*.txt": no documents to train on'):
        next(batches)
    batches.close()


def test_prepare_errors_name_the_file_and_line(tmp_path, teachers):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')
    compiled = _compiled(tmp_path, teachers("qwen3"), 'data jsonl "c.jsonl"\nseq 4\nsteps 1')
    with pytest.raises(SurgeryError, match=r"c\.jsonl:3: no field `text`"):
        shards.prepare(compiled, progress=False)
    assert not shards.status(compiled).complete


PREPARE = """
import sys
from surgery.compile import compile_file
from surgery.distill import shards
shards.PIECE_BYTES = 4096
shards.prepare(compile_file(sys.argv[1]), progress=False, workers=2)
"""


def _shard_bytes(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.endswith((".tokens", ".npy"))}


def test_prepare_survives_kill_9_and_resumes(tmp_path, teachers, cache, monkeypatch):
    # Many small pieces on two worker processes; kill the lot once a few shards are listed.
    text_corpus(tmp_path / "c", documents(400, seed=8, words=(20, 60)))
    jsonl_corpus(tmp_path / "d.jsonl", documents(200, seed=9, words=(20, 60)))
    recipe = distill_recipe(tmp_path, teachers("qwen3"), 'data text "c/*.txt"\ndata jsonl "d.jsonl"\nseq 8\nsteps 1')
    env = {**ENV, "SURGERY_CACHE": str(cache.parent)}
    cmd = [sys.executable, "-c", PREPARE, str(recipe)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    directory = shards.status(compile_file(recipe)).directories[0]
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        manifest = shards.read_manifest(directory) if (directory / "manifest.json").exists() else None
        if manifest and len(manifest["shards"]) >= 3:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    manifest = shards.read_manifest(directory)
    assert not manifest["done"] and 3 <= len(manifest["shards"])
    for s in manifest["shards"]:  # what the manifest lists is whole
        assert (directory / f"{s['name']}.tokens").stat().st_size == 2 * s["tokens"]
        assert len(np.load(directory / f"{s['name']}.docs.npy")) == s["slots"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shards.status(compile_file(recipe)).complete
    directories = shards.status(compile_file(recipe)).directories
    resumed = [_shard_bytes(d) for d in directories]
    # The same shards as one uninterrupted prepare (here, on one process).
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setattr(shards, "PIECE_BYTES", 4096)
    shards.prepare(compile_file(recipe), progress=False, workers=1)
    fresh = [_shard_bytes(tmp_path / "fresh" / "tokens" / d.name) for d in directories]
    assert len(resumed[0]) > 10 and resumed == fresh


def test_prepare_command(tmp_path, teachers):
    jsonl_corpus(tmp_path / "c.jsonl", documents(10))
    recipe = distill_recipe(tmp_path, teachers("qwen3"), 'data jsonl "c.jsonl"\nseq 8\nsteps 1')
    env = {**ENV, "SURGERY_CACHE": os.environ["SURGERY_CACHE"]}
    done = subprocess.run([sys.executable, "-m", "surgery", "prepare", str(recipe), "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(shards.status(compile_file(recipe)).directories[0])
    bare = tmp_path / "bare.boom"
    bare.write_text(recipe.read_text().split("distill {")[0])
    done = subprocess.run([sys.executable, "-m", "surgery", "prepare", str(bare)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "bare.boom: error: the recipe has no `distill` block, so no data to prepare" in done.stderr


# ----------------------------------------------------------------------------- hub datasets, offline


def _dataset(directory: Path, docs: list[str], kind: str) -> Path:
    """A local dataset directory of three files, as `load_dataset` reads one."""
    directory.mkdir(parents=True)
    for i in range(3):
        part = docs[i::3]
        if kind == "jsonl":
            jsonl_corpus(directory / f"train-{i}.jsonl", part, field="content")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"content": part, "id": list(range(len(part)))}),
                           directory / f"train-{i}.parquet")
    return directory


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_hub_dataset_prepares_offline_up_to_what_the_recipe_needs(tmp_path, teachers, kind, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setattr(shards, "PIECE_BYTES", 600)
    monkeypatch.setattr(shards, "SLACK_ROWS", 0)
    docs = documents(300, seed=10)
    _dataset(tmp_path / "ds", docs, kind)
    body = 'data hf "ds" split "train" field "content"\nvalidation 10%\nseq 8\nbatch 4\nsteps {}'
    compiled = _compiled(tmp_path, teachers("qwen3"), body.format(5))
    # 5 steps x 4 rows x 8 tokens, 5% more, over the 90% not held out; the validation rows need less.
    assert shards.sources(compiled)[0].need == 187
    shards.prepare(compiled, progress=False)
    directory = shards.status(compiled).directories[0]
    small = shards.read_manifest(directory)
    # It stopped soon after (pieces in flight finish), far from the end of the dataset.
    assert shards.status(compiled).complete and not small["done"] and 187 <= small["tokens"] < 2000
    rows = feed.open_rows(compiled, ONE)
    assert len(rows.take(40)) == 40 and len(rows.validation(4)) == 4
    state = rows.state_dict()
    # A recipe that needs more extends the same cache from where it stopped.
    longer = _compiled(tmp_path, teachers("qwen3"), body.format(60))
    assert not shards.status(longer).complete
    shards.prepare(longer, progress=False)
    grown = shards.read_manifest(directory)
    assert grown["shards"][:len(small["shards"])] == small["shards"] and grown["tokens"] > small["tokens"]
    cache = shards.TokenCache(directory)
    from transformers import AutoTokenizer

    in_order = [d for i in range(3) for d in docs[i::3]]  # the dataset's own order: file by file
    expected = data.Encoder(AutoTokenizer.from_pretrained(teachers("qwen3")))(in_order[:cache.slots])
    assert np.array_equal(cache.read(0, int(cache.starts[-1])), np.concatenate(expected))
    # The run that started on the small cache resumes on its documents, not the grown set.
    assert state["sources"][0]["slots"] == sum(s["slots"] for s in small["shards"]) < cache.slots
    resumed = feed.open_rows(compiled, ONE)
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.take(20).tokens, rows.take(20).tokens)


def test_hub_stream_resumes_from_the_datasets_state(tmp_path, teachers, tokenizer, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setattr(data, "HUB_SHUFFLE_BUFFER", 7)
    _dataset(tmp_path / "ds", documents(150, seed=11), "jsonl")
    body = 'data hf "ds" split "train" field "content"\nvalidation 10%\nseq 8\nsteps 1'
    compiled = _compiled(tmp_path, teachers("qwen3"), body)
    whole = data.Corpus(compiled.recipe, tokenizer)
    read_whole = _count_records(whole, monkeypatch)
    expected = whole.train.take(2000).tokens  # over two epochs
    first = data.Corpus(compiled.recipe, tokenizer)
    head = first.train.take(31)
    state = json.loads(json.dumps(first.train.state_dict()))
    epoch, (block, used, position) = state["sources"][0]["epoch"], state["sources"][0]["position"]
    assert block > 0 and position["examples_iterable"]  # the `datasets` state, not a count of records
    again = data.Corpus(compiled.recipe, tokenizer)
    again.train.load_state_dict(state)
    read = _count_records(again, monkeypatch)
    tail = again.train.take(2000 - 31)
    assert np.array_equal(np.concatenate([head.tokens, tail.tokens]), expected)
    # It re-read the block it stopped in, and none of the records before.
    assert max(p.epoch for p in whole.train.packers) >= 1
    assert len(read) == len(read_whole) - (150 * epoch + 7 * block)


def _count_records(corpus, monkeypatch) -> list:
    read, source = [], corpus.sources[0]
    text = source.text
    monkeypatch.setattr(source, "text", lambda record: read.append(record) or text(record))
    return read
