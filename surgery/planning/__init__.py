"""Patch planning: which student layers to patch for each size.

- `choose`: menus of candidate models per order, size selection, the `PatchSchedule` that
  `surgery plan` prints and writes (schedule.json).
- `dag` + `costs`: the additive cost model and the k cheapest sets of every size under it.
- `optimal`: `order optimal`, the model's cheapest sets of each size, measured, best kept.
- `greedy`: KLPatch.
- `measure` (torch): KL to the teacher of many patched models with shared prefixes.
- `calibration`, `models` (torch): calibration rows; loading the teacher and student.

Nothing here imports torch at module level except `measure`.
"""
