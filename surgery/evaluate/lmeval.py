"""lm-eval 0.4.x tasks (`tasks ...`, `tasks_path`, `limit`), run through `HFLM` on a model directory.

lm-eval is an optional extra (`pip install 'surgery[eval]'`); it is imported only here, and only
when a recipe names tasks. Scores are cached per model (content fingerprint) and task: the key
holds the task's YAML, its parsed config, the local data files it reads, `limit` and the
lm-eval version, so editing a local task or its data invalidates exactly its scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

from surgery.errors import SurgeryError, did_you_mean
from surgery.fingerprint import Digests, digest_value


def require():
    """The lm_eval module, or a clean error naming the extra to install."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401 (needs accelerate)
    except ImportError as err:
        raise SurgeryError(f"the recipe's `tasks` need lm-eval, which is not installed ({err.name} is missing)",
                           hint="pip install 'surgery[eval]'  (lm-eval 0.4 with its Hugging Face backend)") from None
    return lm_eval


class Tasks:
    """The requested tasks, resolved against lm-eval's registry and the recipe's `tasks_path`."""

    def __init__(self, names: tuple[str, ...], tasks_path: Path | None = None):
        lm_eval = require()
        from lm_eval.tasks import TaskManager

        self.version = lm_eval.__version__
        if tasks_path is not None and not Path(tasks_path).is_dir():
            raise SurgeryError(f"tasks_path {tasks_path} is not a directory",
                               hint="point `tasks_path` at a directory of lm-eval task YAMLs")
        include = str(tasks_path) if tasks_path is not None else None
        # Indexing lm-eval's ~15k built-in tasks takes seconds; skip it when the local ones suffice.
        manager = TaskManager(include_path=include, include_defaults=False) if include else None
        if manager is None or not set(names) <= set(manager.all_tasks):
            manager = TaskManager(include_path=include)
        self.manager = manager
        for name in names:
            if name not in manager.task_index:
                hint = (did_you_mean(name, manager.all_tasks)
                        or "list tasks with `lm_eval ls tasks`; local ones need `tasks_path`")
                raise SurgeryError(f"lm-eval has no task `{name}`", hint=hint)

    def key(self, name: str, limit: int | None, digests: Digests) -> dict:
        """What a task's score depends on, besides the model."""
        entry = self.manager.task_index[name]  # a python-defined task has no YAML and no cfg
        data = [Path(p) for p in _data_files(entry.cfg or {}) if Path(p).is_file()]
        return {
            "task": name, "limit": limit, "lm_eval": self.version,
            "yaml": digests.file(entry.yaml_path) if entry.yaml_path and Path(entry.yaml_path).is_file() else None,
            "config": digest_value(entry.cfg),
            "data": digests.files(data) if data else None,
        }


def _data_files(cfg: dict) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(files)


def primary_metric(scores: dict) -> tuple[str, float] | None:
    """The task's headline number: its first metric, as the task YAML orders them."""
    for key, value in scores.items():
        if isinstance(value, (int, float)) and "," in key and "_stderr" not in key:
            return key.split(",")[0], float(value)
    return None


def run_tasks(directory: Path, tasks: Tasks, names, *, limit: int | None, device: str = "auto",
              trust_remote_code: bool = False) -> dict[str, dict]:
    """Run `names` on the model in `directory`; {task: {metric: value, ...}}."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from surgery import devices
    from surgery.hf import require_safetensors

    require_safetensors(directory)
    device = devices.resolve(device)
    on_cpu = device == "cpu"
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    # use_safetensors reaches from_pretrained: never a pickle file, even one that sits beside the safetensors.
    lm = HFLM(pretrained=str(directory), device=device, dtype="float32" if on_cpu else "auto",
              batch_size=16 if on_cpu else "auto", trust_remote_code=trust_remote_code, use_safetensors=True)
    out = simple_evaluate(model=lm, tasks=list(names), task_manager=tasks.manager, limit=limit,
                          log_samples=False)
    results = {}
    for name in names:
        row = out["results"].get(name) or out.get("groups", {}).get(name)
        if row is None:
            raise SurgeryError(f"lm-eval returned no result for task `{name}`",
                               hint="a group without aggregate metrics has no single score; name its subtasks")
        scores = {k: v for k, v in row.items() if isinstance(v, (int, float)) and "," in k}
        scores["samples"] = out.get("n-samples", {}).get(name, {}).get("effective")
        results[name] = scores
    return results
