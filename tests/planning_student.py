"""A stand-in "distilled" student for planning tests: the teacher's kept layers, perturbed.

Built with transformers alone (load the teacher, take the layers the layer graph keeps, add
noise, `save_pretrained`), so these tests do not depend on the materializer.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_student(teacher_dir: Path, graph, out: Path, noise: float = 0.05, seed: int = 1) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    arch = graph.arch
    config = AutoConfig.from_pretrained(teacher_dir)
    setattr(config, arch.depth, graph.n_student)
    for key in arch.per_layer:
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, [getattr(config, key)[t] for t in graph.kept])
    student = AutoModelForCausalLM.from_config(config)
    source = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        layer = arch.layer_of(name)
        state[name] = source[name if layer is None else arch.rename_layer(name, graph.kept[layer])]
    student.load_state_dict(state)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * noise)
    student.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
    # What the authors' trainer writes beside its student, and what surgery checks the layers by.
    (Path(out) / "student_config.json").write_text(json.dumps(
        {"pruned_teacher_layers": list(graph.pruned), "copied_teacher_layers": list(graph.kept)}))
    return out
