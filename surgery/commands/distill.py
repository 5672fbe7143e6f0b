"""`surgery distill RECIPE`: distill the student against the teacher, per the distill block.

Multi-GPU: `torchrun --nproc-per-node N -m surgery distill RECIPE`.
"""

from __future__ import annotations

HELP = "distill the student (written by init-student) against its teacher; resumes from checkpoints"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (tokens, steps, memory) and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl still written)")
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to RUN/tensorboard")
    parser.add_argument("--stop-after", type=int, metavar="STEP",
                        help="checkpoint and stop after step STEP (for time-limited job slots); rerun to go on")


def run(args) -> int:
    from surgery.compile import compile_file

    compiled = compile_file(args.recipe)
    if args.dry_run:  # before importing the engine: the plan needs no torch
        from surgery.distill.plan import dry_run

        print(dry_run(compiled))
        return 0
    from surgery.distill.train import run as distill

    distill(compiled, progress=not args.no_progress, tensorboard=args.tensorboard, stop_after=args.stop_after)
    return 0
