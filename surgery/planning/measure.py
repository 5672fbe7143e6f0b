"""KL to the teacher (and next-token loss) of many patched models, sharing all common work.

The models asked for in one call are walked as a trie over the blocks: models that agree on
blocks 0..i share the hidden state after block i, which is computed once per calibration batch
and kept only while the walk is below it. The teacher is always in the trie and is reached
first, so its log-probabilities are ready when the first other model ends. Results are memoised
per patched set (the computation is deterministic), so a later call measures only new models.

Measuring N models that share nothing costs N forward passes; models that share a prefix cost
less. KLPatch's M(M+1)/2 candidates, and `optimal`'s 2M-1 probes and its candidates, share
prefixes by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from surgery.errors import SurgeryError
from surgery.graph import STUDENT, TEACHER, LayerGraph, LayerRef
from surgery.inmemory import assemble, segment


@dataclass(frozen=True)
class Score:
    kl: float  # KL(teacher || model) per token, in nats
    nll: float  # next-token negative log-likelihood per predicted token, in nats


class Measurer:
    """Scores patched models on fixed token rows; `rows` is a [N, L] tensor of token ids."""

    def __init__(self, teacher, student, graph: LayerGraph, rows: torch.Tensor, *,
                 batch_rows: int | None = None, memory_elements: int = 2**25):
        self.teacher, self.student, self.graph = teacher.eval(), student.eval(), graph
        self.device = next(teacher.parameters()).device
        vocab = teacher.get_output_embeddings().weight.shape[0]
        # Two [rows, seq, vocab] fp32 tensors live at once per batch (teacher and model log-probs).
        batch_rows = batch_rows or max(1, memory_elements // (rows.shape[1] * vocab))
        self.batches = [rows[i:i + batch_rows].to(self.device) for i in range(0, len(rows), batch_rows)]
        self.rows, self.tokens = rows.shape[0], rows.numel()
        self.predicted = rows.shape[0] * (rows.shape[1] - 1)
        self._segments: dict[tuple[int, str], tuple[torch.nn.Module, int]] = {}
        self._memo: dict[frozenset[int], Score] = {}
        self.passes = 0.0  # work done, in forward passes of the teacher over all rows; for cost reports
        self._check_chaining()

    # ------------------------------------------------------------------ public
    @property
    def measured(self) -> int:
        """How many distinct models have been measured (the teacher included)."""
        return len(self._memo)

    def kl(self, sets: Sequence[frozenset[int]]) -> list[float]:
        return [s.kl for s in self.scores(sets)]

    def scores(self, sets: Sequence[frozenset[int]]) -> list[Score]:
        sets = [frozenset(s) for s in sets]
        todo = sorted({s for s in sets if s not in self._memo}, key=sorted)
        if todo:
            teacher = frozenset(range(self.graph.n_student))
            walk = [teacher] + [s for s in todo if s != teacher]
            kl = torch.zeros(len(walk), dtype=torch.float64)
            nll = torch.zeros(len(walk), dtype=torch.float64)
            for ids in self.batches:
                batch_kl, batch_nll = self._batch(ids, walk)
                kl += batch_kl
                nll += batch_nll
            for s, k, n in zip(walk, kl.tolist(), nll.tolist()):
                self._memo[s] = Score(k / self.tokens, n / self.predicted)
        return [self._memo[s] for s in sets]

    # ------------------------------------------------------------------ the trie walk
    @torch.inference_mode()
    def _batch(self, ids: torch.Tensor, walk: list[frozenset[int]]):
        n = self.graph.n_student
        flags = [[i in s for i in range(n)] for s in walk]
        kl = torch.zeros(len(walk), dtype=torch.float64)
        nll = torch.zeros(len(walk), dtype=torch.float64)
        teacher_logp = None

        def visit(i: int, hidden: torch.Tensor, group: list[int]) -> None:
            nonlocal teacher_logp
            if i == n:
                logp = F.log_softmax(hidden.float(), dim=-1)
                if all(flags[group[0]]):
                    teacher_logp = logp
                for j in group:  # models identical up to here are the same model
                    kl[j] = F.kl_div(logp, teacher_logp, log_target=True, reduction="sum").item()
                    nll[j] = F.nll_loss(logp[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
                return
            for patched in (True, False):  # teacher side first: the all-teacher leaf comes first
                sub = [j for j in group if flags[j][i] == patched]
                if sub:
                    visit(i + 1, self._run(i, TEACHER if patched else STUDENT, hidden), sub)

        visit(0, ids, list(range(len(walk))))
        return kl, nll

    def _run(self, i: int, side: str, x: torch.Tensor) -> torch.Tensor:
        """Block i on `side`: token ids in for block 0, logits out of the last block."""
        g = self.graph
        key = (i, side)
        if key not in self._segments:
            refs = tuple(LayerRef(TEACHER, t) for t in g.blocks[i].teacher) if side == TEACHER else (LayerRef(STUDENT, i),)
            last = i == g.n_student - 1
            self._segments[key] = (segment(self.teacher, self.student, g, refs, side if i == 0 else None,
                                           side if last else None), len(refs))
        model, depth = self._segments[key]
        self.passes += depth / g.n_teacher * x.shape[0] / self.rows
        inputs = {"input_ids": x} if i == 0 else {"inputs_embeds": x}
        if i == g.n_student - 1:
            return model(**inputs, use_cache=False).logits
        return model.base_model(**inputs, use_cache=False).last_hidden_state

    def _check_chaining(self) -> None:
        """Chained segments must reproduce a whole forward; a family whose forward rescales
        `inputs_embeds` would not, and gets an error instead of wrong numbers."""
        ids = self.batches[0][:1]
        with torch.inference_mode():
            whole = assemble(self.teacher, self.student, self.graph, self.graph.teacher)(ids, use_cache=False).logits
            x = ids
            for i in range(self.graph.n_student):
                x = self._run(i, TEACHER, x)
        if not torch.allclose(x.float(), whole.float(), atol=1e-3, rtol=1e-3):
            raise SurgeryError(f"layer-by-layer measurement does not reproduce the {self.graph.arch.name} forward",
                               hint="this architecture rescales hidden states passed in as inputs_embeds")
