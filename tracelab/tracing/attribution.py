"""Attribution patching: the whole trace grid from one forward and one backward pass per sample.

    >>> r = tracelab.attribute(model, prompt, subject)   # a TraceResult of estimates (exact=False)
    >>> tracelab.trace(model, prompt, subject, screen=30) # estimates, then the top-30 cells per kind exact

First-order estimate of restoring site x at token t in the corrupted run (Nanda 2023):

    IE(x, t) ≈ (x_clean[t] − x_corrupt[t]) · ∂metric/∂x[t]   (gradient taken in the corrupted run)

`mlp`/`attn` cells sum this over the layers of their window, as the exact restoration does.
"""

from __future__ import annotations


import torch

from ..models.hooks import intervene
from .problem import Problem


def _keep(store: dict, name: str):
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x + 0  # a fresh node that the rest of the forward reads, so its gradient is the site's
        store[name] = y
        return y
    return fn


def estimate_scores(problem: Problem) -> dict[str, torch.Tensor]:
    """Estimated score of every cell `{kind: [samples, n_layers, n_tokens]}` = corrupted + estimate
    (exactly the corrupted score before the first corrupted position)."""
    model, L = problem.model, problem.n_layers
    clean = problem.clean_sites()
    site_of = {"resid": model.resid, "mlp": model.mlp_out, "attn": model.attn_out}
    sites = [site_of[k](l) for k in problem.kinds for l in range(L)]
    acts: dict[str, torch.Tensor] = {}
    patches = {s: _keep(acts, s.name) for s in sites}
    if problem.corrupted.embed_fn:
        patches[model.embed] = problem.corrupted.embed_fn
    with torch.enable_grad(), intervene(model, patches):
        logits = model.hf(input_ids=problem.corrupted.ids, logits_to_keep=1).logits[:, -1]  # LM head: last position
        grads = torch.autograd.grad(problem.metric(logits).sum(), [acts[s.name] for s in sites])
    # ie[site][s, t] = (clean − corrupt)[s, t] · grad[s, t]
    ie = {s.name: ((clean[s.name].float() - acts[s.name].detach().float()) * g.float()).sum(-1).view(
        problem.corrupted.samples, problem.n_tokens) for s, g in zip(sites, grads)}
    scores = problem.empty_scores()
    first = problem.corrupted.first
    for kind in problem.kinds:
        for l in range(L):
            layers = [l] if kind == "resid" else problem.window_layers(l)
            est = sum(ie[site_of[kind](j).name] for j in layers)
            scores[kind][:, l, first:] += est[:, first:].cpu()
    return scores


def top_cells(estimate: torch.Tensor, corrupted: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Bool `[n_layers, n_tokens]`: the `k` allowed cells with the largest |mean estimated effect|."""
    effect = (estimate - corrupted[:, None, None]).mean(0).abs().masked_fill(~allowed, -1)
    chosen = torch.zeros(effect.numel(), dtype=torch.bool)
    if k > 0:
        chosen[effect.flatten().topk(min(k, int(allowed.sum()))).indices] = True
    return chosen.view_as(effect) & allowed
