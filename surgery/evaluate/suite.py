"""Score model directories with a recipe's `evaluate` block: perplexity and lm-eval tasks, cached.

A score is looked up in the cache by the model directory's content fingerprint and a key of
everything else it depends on, so rerunning an evaluation (or resuming an interrupted one)
only computes what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.evaluate.cache import ResultCache
from surgery.fingerprint import Digests
from surgery.hf import require_safetensors
from surgery.recipe.ast import Evaluate, Recipe


@dataclass(frozen=True)
class Scores:
    perplexity: float | None
    tokens: int | None  # tokens scored for perplexity
    tasks: dict[str, dict]  # task -> {metric: value}

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "tokens": self.tokens, "tasks": self.tasks}


class Evaluator:
    """The recipe's evaluation settings, bound to a cache and a digest memo."""

    def __init__(self, recipe: Recipe, cache: ResultCache, digests: Digests, *, device: str = "auto"):
        self.recipe = recipe
        self.block: Evaluate = recipe.evaluate or Evaluate()
        self.cache = cache
        self.digests = digests
        self.device = device
        self.trust_remote_code = recipe.teacher.trust_remote_code
        self._texts = None
        self._tokens: dict[str, list[list[int]]] = {}  # tokenizer digest -> documents
        self._tasks = None

    def _in_recipe(self, err: SurgeryError, pos) -> SurgeryError:
        """`err`, placed at `pos` in the recipe file with its source line."""
        located = SurgeryError(err.message, pos=err.pos or pos, hint=err.hint)
        return located.located(self.recipe.path, self.recipe.path.read_text(encoding="utf-8"))

    @property
    def text_files(self) -> list[Path]:
        from surgery.evaluate.perplexity import text_files

        if self._texts is None:
            try:
                self._texts = text_files(self.recipe.resolve(self.block.perplexity.text))
            except SurgeryError as err:
                raise self._in_recipe(err, self.block.perplexity.pos) from None
        return self._texts

    @property
    def tasks(self):
        """The resolved lm-eval tasks (imports lm-eval), or None when the recipe names none."""
        if self._tasks is None and self.block.tasks:
            from surgery.evaluate.lmeval import Tasks

            path = self.recipe.resolve(self.block.tasks_path) if self.block.tasks_path else None
            try:
                self._tasks = Tasks(self.block.tasks, path)
            except SurgeryError as err:
                raise self._in_recipe(err, self.block.pos) from None
        return self._tasks

    def inputs(self) -> dict:
        """Digests of the data the scores depend on (for stage records)."""
        out = {}
        if self.block.perplexity is not None:
            out["perplexity_text"] = self.digests.files(self.text_files)
        if self.block.tasks_path:
            out["tasks_path"] = self.digests.tree(self.recipe.resolve(self.block.tasks_path))
        return out

    def _key(self, key: dict) -> dict:
        """`key` plus the device kind: a CPU scores in fp32, an accelerator in the stored dtype."""
        from surgery import devices

        return {**key, "device": devices.resolve(self.device)}

    def _perplexity_key(self) -> dict:
        p = self.block.perplexity
        return self._key({"metric": "perplexity", "seq": p.seq, "stride": p.stride,
                          "text": self.digests.files(self.text_files)})

    def _documents(self, directory: Path) -> list[list[int]]:
        from surgery.evaluate.perplexity import tokenize
        from surgery.hf import load_tokenizer
        from surgery.source import read_config

        key = self.digests.tokenizer(directory)
        if key not in self._tokens:
            config = read_config(Path(directory) / "config.json", "model")
            tokenizer = load_tokenizer(directory, config, self.trust_remote_code)
            self._tokens[key] = tokenize(tokenizer, self.text_files)
        return self._tokens[key]

    def score(self, directory: Path) -> Scores:
        """The recipe's metrics for the model in `directory`, computing only what is not cached."""
        directory = Path(directory)
        require_safetensors(directory)  # before the cache too: a pickled model is never scored
        model = self.digests.model_dir(directory)
        perplexity = tokens = None
        if self.block.perplexity is not None:
            key = self._perplexity_key()
            found = self.cache.get(model, key)
            if found is None:
                from surgery.evaluate.perplexity import perplexity_of

                p = self.block.perplexity
                result = perplexity_of(directory, self._documents(directory), p.seq, p.stride, device=self.device,
                                       trust_remote_code=self.trust_remote_code)
                found = {"perplexity": result.perplexity, "nll": result.nll, "tokens": result.tokens}
                self.cache.put(model, key, found)
            perplexity, tokens = found["perplexity"], found["tokens"]
        tasks = {}
        if self.tasks is not None:
            keys = {name: self._key(self.tasks.key(name, self.block.limit, self.digests)) for name in self.block.tasks}
            for name, key in keys.items():
                found = self.cache.get(model, key)
                if found is not None:
                    tasks[name] = found
            missing = [name for name in self.block.tasks if name not in tasks]
            if missing:
                from surgery.evaluate.lmeval import run_tasks

                ran = run_tasks(directory, self.tasks, missing, limit=self.block.limit, device=self.device,
                                trust_remote_code=self.trust_remote_code)
                for name in missing:
                    self.cache.put(model, keys[name], ran[name])
                    tasks[name] = ran[name]
        self.digests.save()
        return Scores(perplexity, tokens, {name: tasks[name] for name in self.block.tasks})

