"""The reference engine: one forward pass per cell, the paper's algorithm as written.

    >>> scores = run_naive(problem, cells)           # {kind: [samples, n_layers, n_tokens]}

For each (kind, layer l, token t): run the corrupted prompt (all samples as one batch) with the
clean value written back at token t into the block output of layer l (`resid`), or into the MLP /
attention output of every layer of the window around l (`mlp`, `attn`), and score the last
position. Slow and obviously right; the fast engine is tested against it.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models.hooks import intervene, replace
from .problem import Problem


@torch.no_grad()
def run_naive(problem: Problem, cells: dict[str, torch.Tensor], progress: bool = True) -> dict[str, torch.Tensor]:
    """Scores of the restored runs at `cells[kind]` (bool `[n_layers, n_tokens]`); other cells
    hold the corrupted score. Returns `{kind: [samples, n_layers, n_tokens]}` float32."""
    model, corrupted = problem.model, problem.corrupted
    clean = problem.clean_sites()
    scores = problem.empty_scores()
    todo = [(kind, l, t) for kind, mask in cells.items() for l, t in mask.nonzero().tolist()]
    for kind, l, t in tqdm(todo, desc="trace (naive)", disable=not progress):
        patches = {model.embed: corrupted.embed_fn} if corrupted.embed_fn else {}
        for site in problem.restored_sites(kind, l):
            patches[site] = replace(clean[site.name][0, t], positions=[t])  # h_site[t] ← clean
        with intervene(model, patches):
            logits = model.hf(input_ids=corrupted.ids).logits[:, -1]  # the full forward, as the paper runs it
        scores[kind][:, l, t] = problem.metric(logits)
    return scores
