import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import FAMILIES, save_teacher  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def token_cache(tmp_path_factory):
    """The token cache `surgery prepare` (and so `surgery run`) fills goes to a temporary
    directory, never the user's ~/.cache; subprocesses inherit it."""
    import os

    saved = os.environ.get("SURGERY_CACHE")
    os.environ["SURGERY_CACHE"] = str(tmp_path_factory.mktemp("surgery-cache"))
    yield
    if saved is None:
        del os.environ["SURGERY_CACHE"]
    else:
        os.environ["SURGERY_CACHE"] = saved


@pytest.fixture(scope="session")
def teachers(tmp_path_factory):
    """A factory of cached tiny teachers: teachers(family, layers=6, tied=False)."""
    made = {}

    def get(family: str = "qwen3", layers: int = 6, tied: bool = False, **kw) -> Path:
        key = (family, layers, tied, tuple(sorted(kw.items())))
        if key not in made:
            d = tmp_path_factory.mktemp(f"teacher-{family}-{layers}{'-tied' if tied else ''}")
            made[key] = save_teacher(d, family, layers=layers, tied=tied, **kw)
        return made[key]

    return get


__all__ = ["FAMILIES"]
