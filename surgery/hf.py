"""Loading a Hugging Face model directory for scoring, with one clean error for a bad one."""

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
