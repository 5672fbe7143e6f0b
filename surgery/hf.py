"""Loading Hugging Face model directories and tokenizers, safetensors only, with one clean error for a bad one."""

from __future__ import annotations

from pathlib import Path

from surgery.errors import SurgeryError


def require_safetensors(directory: Path, what: str = "model") -> None:
    """Refuse a model directory without safetensors, before transformers could fall back to pickle."""
    if not any(Path(directory).glob("*.safetensors")):
        pickled = sorted(p.name for p in Path(directory).glob("*.bin"))
        raise SurgeryError(f"the {what} in {directory} has no *.safetensors files"
                           + (f" (only {', '.join(pickled)})" if pickled else ""),
                           hint="surgery loads weights from safetensors only, never from pickle files; convert with "
                                "`save_pretrained(..., safe_serialization=True)` where you trust the file")


def load_causal_lm(directory: Path, *, dtype, device: str, what: str = "model", trust_remote_code: bool = False):
    """`AutoModelForCausalLM` from safetensors in `directory`, on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    require_safetensors(directory, what)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
    except (OSError, ValueError) as err:
        raise SurgeryError(f"cannot load the {what} in {directory}: {str(err).splitlines()[0]}",
                           hint="is it a complete Hugging Face model directory?") from None
    return model.to(device).eval()


def load_tokenizer(directory: Path, config: dict, trust_remote_code: bool = False):
    """The tokenizer in `directory`, checked against the model's `config`: the one loader, for
    distillation, planning and evaluation alike."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SurgeryError(f"cannot load the tokenizer in {directory}: {str(err).splitlines()[0]}",
                           hint="a model directory needs its tokenizer files") from None
    check_tokenizer(tok, config, directory)
    return tok


def check_tokenizer(tok, config: dict, where) -> None:
    vocab = config.get("vocab_size")
    if vocab is not None and len(tok) > vocab:
        raise SurgeryError(f"the tokenizer in {where} has {len(tok)} tokens but the teacher's embedding has "
                           f"{vocab} rows", hint="use the tokenizer that came with the teacher")
    if tok.eos_token_id is None:
        raise SurgeryError(f"the tokenizer in {where} has no EOS token", hint="packing separates documents with EOS")
    eos = config.get("eos_token_id")
    eos = set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()
    if eos and tok.eos_token_id not in eos:
        raise SurgeryError(f"the tokenizer's EOS token is {tok.eos_token_id} but the teacher's config says "
                           f"{sorted(eos)[0] if len(eos) == 1 else sorted(eos)}",
                           hint="tokenizer and teacher do not match; use the tokenizer that came with the teacher")
