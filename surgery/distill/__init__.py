"""The distillation engine: train the recipe's student against its teacher (docs/distill.md).

    train.run(compiled) -> the student directory, now holding the distilled student
                           (resumed from the newest checkpoint in `<student>.checkpoints/`)

Modules: `data` (corpus -> packed rows, streamed), `shards` (token caches: `surgery prepare`),
`feed` (rows by position from the caches, batches on a background thread), `losses` (the loss
terms), `models` (teacher, student, hidden-state capture), `steps` (the distillation step
schedule: what the distill block means here), `parallel` (torch.distributed), `checkpoint`
(atomic checkpoints and the final export), `progress` (progress bar and metrics.jsonl), `train`
(the loop).
"""
