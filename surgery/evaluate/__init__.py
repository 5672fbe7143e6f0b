"""Evaluation of the models a recipe makes (docs/pipeline.md).

Modules: `perplexity` (sliding-window perplexity), `lmeval` (lm-eval tasks through HFLM),
`cache` (scores by model content), `suite` (a recipe's evaluate block over model directories),
`baseline` (naive pruning), `lineup` (which models are evaluated, and the evaluation record),
`report` (results.json, results.md, curve.png), `compare` (several runs' records as one table and figure).
"""
