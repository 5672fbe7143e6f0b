"""Directory swaps: the new directory lands whole, the old one leaves no trace, a crash between
the two renames is undone by `recover`."""

from __future__ import annotations

from surgery import durable


def _dir(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_swap_into_an_empty_place(tmp_path):
    tmp = _dir(tmp_path / ".out.tmp", a="new")
    durable.swap_into_place(tmp, tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_swap_replaces_a_directory_or_a_file(tmp_path):
    for old in ("dir", "file"):
        out = tmp_path / old
        if old == "dir":
            _dir(out, a="old", b="old")
        else:
            out.write_text("old")
        durable.swap_into_place(_dir(tmp_path / f".{old}.tmp", a="new"), out)
        assert sorted(p.name for p in out.iterdir()) == ["a"] and (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_recover_puts_back_the_old_directory_after_a_crash_between_the_renames(tmp_path):
    out = tmp_path / "out"
    _dir(tmp_path / ".out.old", a="old")  # the first rename happened, the second did not
    durable.recover(out)
    assert (out / "a").read_text() == "old" and not (tmp_path / ".out.old").exists()
    _dir(tmp_path / ".out.old", a="older")
    durable.recover(out)  # `out` is there: nothing to undo
    assert (out / "a").read_text() == "old"


def test_clean_removes_only_the_leftovers_surgery_names(tmp_path):
    out = tmp_path / "out"
    made = [durable.temp_dir(out), durable.temp_dir(out, "scratch")]
    assert all(p.parent == tmp_path and p.name.startswith(".out.") and len(p.name.split(".")[2]) == 8 for p in made)
    _dir(tmp_path / ".out.old", a="old")  # the old output was moved aside, the new one never came
    others = [_dir(tmp_path / name, a="mine") for name in (".out.1234567.tmp", ".outx.abcdefgh.tmp", ".out.old2")]
    durable.clean(out)
    assert (out / "a").read_text() == "old"  # put back, not removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out"] + [p.name for p in others])
    _dir(tmp_path / ".out.old", a="older")
    durable.clean(out)  # `out` is whole: the one aside goes
    assert (out / "a").read_text() == "old" and not (tmp_path / ".out.old").exists()


def test_rewrite_replaces_the_folder_whole_or_leaves_it_as_it_was(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.txt").write_text("old")
    try:
        with durable.rewrite(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt  # killed halfway
    except KeyboardInterrupt:
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and [p.name for p in out.iterdir()] == ["old.txt"]
    with durable.rewrite(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and [p.name for p in out.iterdir()] == ["new.txt"]
