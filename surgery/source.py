"""Find a model's `config.json` (and, when asked, its weights) from what a recipe says.

A recipe names a teacher by local directory or hub id. Compilation needs the config only, so
it is found without touching weights, in this order: a local directory (relative to the
recipe), the Hugging Face cache, the published configs bundled with surgery
(`surgery/configs/ORG/NAME/config.json`), and last the hub itself.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import Pos, SurgeryError

BUNDLED = Path(__file__).resolve().parent / "configs"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


@dataclass(frozen=True)
class ModelSource:
    """Where a model was found, and its config.json."""

    spec: str  # as written in the recipe
    config: dict
    origin: str  # "local" | "hf-cache" | "bundled" | "hub"
    directory: Path | None  # a local directory holding config.json (and maybe weights)
    revision: str | None = None

    @property
    def has_weights(self) -> bool:
        return self.directory is not None and any(self.directory.glob("*.safetensors"))


def read_config(path: Path, where: str, pos: Pos | None = None, file: Path | None = None) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SurgeryError(f"{where}: no config.json in {path.parent}", file=file, pos=pos,
                           hint="point at a Hugging Face model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SurgeryError(f"{where}: cannot read {path}: {err}", file=file, pos=pos) from None
    return _json_object(value, path, where, file, pos)


def _json_object(value, path, where: str, file, pos) -> dict:
    """A config is a JSON object; a list, string or number there is a broken file, said so."""
    if not isinstance(value, dict):
        raise SurgeryError(f"{where}: {path} holds a JSON {_JSON_KIND.get(type(value), type(value).__name__)}, "
                           "not an object", file=file, pos=pos,
                           hint="a config.json is one JSON object like {\"model_type\": ...}")
    if not isinstance(value.get("model_type", ""), str):
        raise SurgeryError(f"{where}: {path} has a `model_type` that is not a string", file=file, pos=pos)
    return value


_JSON_KIND = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def expand_user(path: str | Path) -> Path:
    """`path` with `~` and `~user` expanded; a user that does not exist is a user error."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's way of saying it found no home directory for that user
        head = str(path).split("/", 1)[0]
        raise SurgeryError(f"cannot expand `{head}` in `{path}`: there is no such user",
                           hint="write the path without `~`, or as `~/...` for your own home") from None


def resolve(spec: str, *, base: Path, revision: str | None = None, file: Path | None = None,
            pos: Pos | None = None, where: str = "teacher") -> ModelSource:
    """Locate `spec` (a directory or hub id) and read its config.json."""
    try:
        local = expand_user(spec)
    except SurgeryError as err:
        raise SurgeryError(err.message, file=file, pos=pos, hint=err.hint) from None
    local = local if local.is_absolute() else base / local
    if local.is_dir():
        return ModelSource(spec, read_config(local / "config.json", where, pos, file), "local", local.resolve())
    if local.exists():
        raise SurgeryError(f"{where} path {local} is a file, not a model directory", file=file, pos=pos,
                           hint="point at the directory that holds config.json and the *.safetensors files")
    if not HUB_ID.fullmatch(spec):
        raise SurgeryError(f"{where} directory not found: {local}", file=file, pos=pos,
                           hint="give an existing model directory or a hub id like `Qwen/Qwen3-4B-Base`")
    cached = _from_hf_cache(spec, revision)
    if cached is not None:
        return ModelSource(spec, read_config(cached, where, pos, file), "hf-cache", cached.parent, revision)
    bundled = BUNDLED / spec / "config.json"
    if bundled.is_file():
        return ModelSource(spec, read_config(bundled, where, pos, file), "bundled", None, revision)
    # Checked only on the way to the hub: the checker's module costs more than a whole `surgery
    # check`, and an id that breaks the hub's rules is never in the cache or bundled.
    _check_hub_id(spec, where, file, pos)
    return ModelSource(spec, _from_hub(spec, revision, where, file, pos), "hub", None, revision)


def _check_hub_id(repo_id: str, where: str, file, pos) -> None:
    """The hub's own rules for repo ids (no `--`, at most 96 characters, ...), as a located error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SurgeryError(f"{where} `{repo_id}` is neither a local directory nor a valid hub id", file=file,
                           pos=pos, hint=str(err).splitlines()[0]) from None


def _from_hf_cache(repo_id: str, revision: str | None, cache_dir: str | Path | None = None) -> Path | None:
    """The cached config.json, found the way `huggingface_hub.try_to_load_from_cache` finds it.

    Spelled out because importing that function loads the hub client (~0.3 s here); the cache
    layout is documented: models--ORG--NAME/refs/REVISION holds the commit of snapshots/COMMIT/.
    """
    from huggingface_hub import constants  # settings only: cheap

    repo = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    found = repo / "snapshots" / commit / "config.json"
    return found if found.is_file() else None


def _from_hub(repo_id: str, revision: str | None, where: str, file, pos) -> dict:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SurgeryError(f"{where} `{repo_id}` is not cached and HF_HUB_OFFLINE=1", file=file, pos=pos,
                           hint="download it once online, or point the recipe at a local directory")
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        value = json.loads(path.read_text())
    except Exception as err:  # the hub client raises many kinds; all mean "could not fetch"
        raise SurgeryError(f"cannot fetch the config of {where} `{repo_id}`: {type(err).__name__}",
                           file=file, pos=pos,
                           hint="check the hub id and the network, or point the recipe at a local directory") from None
    return _json_object(value, path, where, file, pos)


def weights_dir(source: ModelSource, where: str = "teacher") -> Path:
    """A local directory with the model's safetensors, downloading from the hub if needed."""
    if source.has_weights:
        return source.directory
    if source.origin == "local":
        raise SurgeryError(f"{where} directory {source.directory} has no *.safetensors files",
                           hint="surgery loads weights from safetensors only; convert with `save_pretrained`")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SurgeryError(f"{where} `{source.spec}` has no weights on this machine and HF_HUB_OFFLINE=1",
                           hint="download it once online, or point the recipe at a local directory")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(source.spec, revision=source.revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"])
    except Exception as err:
        raise SurgeryError(f"cannot download {where} `{source.spec}`: {type(err).__name__}",
                           hint="check the hub id and the network, or point the recipe at a local directory") from None
    return Path(path)
