"""`surgery evaluate RECIPE [MODEL_DIR ...]`: score models with the recipe's `evaluate` block."""

from __future__ import annotations

HELP = "score the recipe's models (or the given model directories) and write the report; cached"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("models", nargs="*", metavar="MODEL_DIR",
                        help="score these directories instead of the recipe's student, sizes and teacher")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args) -> int:
    from pathlib import Path

    from surgery.compile import compile_file
    from surgery.errors import SurgeryError
    from surgery.pipeline import run_pipeline

    compiled = compile_file(args.recipe)
    block = compiled.recipe.evaluate
    if block is None or (block.perplexity is None and not block.tasks):
        raise SurgeryError("the recipe has no `evaluate` block with perplexity or tasks", file=compiled.recipe.path,
                           hint='add e.g. `evaluate { perplexity text "held-out/*.txt" }`')
    if not args.models:
        run_pipeline(compiled, only=("evaluate", "report"))
        return 0
    from surgery.evaluate.cache import ResultCache
    from surgery.evaluate.lmeval import primary_metric
    from surgery.evaluate.suite import Evaluator
    from surgery.fingerprint import Digests
    from surgery.pipeline import run_dir

    cache_root = run_dir(compiled)
    evaluator = Evaluator(compiled.recipe, ResultCache(cache_root / "eval-cache"), Digests(cache_root / "digests.json"),
                          device=args.device)
    for directory in map(Path, args.models):
        if not directory.is_dir():
            raise SurgeryError(f"no model directory {directory}")
        scores = evaluator.score(directory)
        cells = [] if scores.perplexity is None else [f"perplexity {scores.perplexity:.3f}"]
        for task, values in scores.tasks.items():
            metric, value = primary_metric(values) or ("?", float("nan"))
            cells.append(f"{task} {metric} {value:.4f}")
        print(f"{directory}: " + ", ".join(cells))
    return 0
