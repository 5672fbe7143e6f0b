"""Which torch device a setting like `device auto` means on this machine."""

from __future__ import annotations

from surgery.errors import SurgeryError


def resolve(setting: str = "auto") -> str:
    """'auto' -> cuda, else mps, else cpu; a named device must exist here."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps}
    if setting == "auto":
        return next(name for name in ("cuda", "mps", "cpu") if available[name])
    if not available.get(setting, False):
        raise SurgeryError(f"device `{setting}` is not available on this machine", hint="use `device auto`")
    return setting
