"""Patch planning: which student layers to patch for each size.

- `plan`: menus of candidate models per order, size selection, the `Plan` that `surgery plan`
  prints and `surgery run` records.
- `dag` + `costs`: the exact planner, a shortest path under an additive cost model.
- `greedy`: KLPatch.
- `measure` (torch): KL to the teacher of many patched models with shared prefixes.
- `calibration`, `models` (torch): calibration rows; loading the teacher and student.

Nothing here imports torch at module level except `measure`.
"""
