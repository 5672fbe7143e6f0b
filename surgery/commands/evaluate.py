"""`surgery evaluate RECIPE [MODEL_DIR ...]`: score models with the recipe's `evaluate` block."""

from __future__ import annotations

import sys

HELP = "score the student, what `emit` wrote and the teacher (or the given model directories); cached"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("models", nargs="*", metavar="MODEL_DIR",
                        help="score these directories instead of the recipe's student, sizes and teacher")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.evaluate.lmeval import primary_metric
    from surgery.stages import Context, evaluate, report

    ctx = Context(compile_file(args.recipe), device=args.device)
    evaluate.require_block(ctx)
    if not args.models:
        done = ctx.fresh(evaluate.directory(ctx), evaluate.NAME, evaluate.inputs(ctx))
        if done is not None and evaluate.intact(ctx, done):
            print(f"{done.path}: up to date", file=sys.stderr)
        else:
            evaluate.run(ctx)
        for path in report.run(ctx):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    for directory, scores in evaluate.score(ctx, args.models):
        cells = [] if scores.perplexity is None else [f"perplexity {scores.perplexity:.3f}"]
        for task, values in scores.tasks.items():
            metric, value = primary_metric(values) or ("?", float("nan"))
            cells.append(f"{task} {metric} {value:.4f}")
        print(f"{directory}: " + ", ".join(cells))
    return 0
