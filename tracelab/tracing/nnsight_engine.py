"""Causal tracing as nnsight traces: the same runs, so that a hosted model (NDIF) can run them.

    >>> from nnsight import TransformersModel
    >>> lm = TransformersModel("meta-llama/Meta-Llama-3.1-70B", task="text-generation")  # NDIF_API_KEY set
    >>> trace(lm, prompt, subject, engine="nnsight", remote=True, corruption=GaussianNoise(std=0.05))

Each nnsight trace is one batch. Row 0 is the clean prompt; the other rows are corrupted runs
(the subject's embeddings plus that row's noise sample, or the TokenReplace prompt), and a
restored row copies row 0's value of a site at its token in the same forward pass,

    h_site[row, t] ← h_site[0, t]

so the clean states never leave the machine that runs the model. What a trace sends: the token
ids `[rows, n_tokens]`, the noise `[rows, n_subject, d_model]` (zeros in row 0), the restored
(row, token) indices per site, and the intervention code below. What comes back: the
last-position log-probabilities of the target and the foil `[rows, 2]`; only the first trace
(clean and corrupted, to find the target, the foil and the baseline scores) returns full
last-position logits `[1 + samples, vocab]`. nnsight reads the API key from `NDIF_API_KEY`;
tracelab never reads, logs or stores it. Locally (`remote=False`) the results equal the fast
engine's (tested). Remote runs were not tested here (no network).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ..models.envoys import envoy, nnsight_model, site_tensor
from ..models.hooks import Site
from .corruption import Corrupted
from .problem import Problem

_ORDER = {"attn_out": 0, "mlp_out": 1, "resid": 2}  # within a block, the order the forward pass reaches them


class NNsightRunner:
    """Runs batches of rows of one prompt as nnsight traces on `lm` (the user's nnsight model, or
    `model.hf` wrapped in `NNsight` when `user_object` is not one), locally or with `remote=True`."""

    def __init__(self, model, user_object=None, remote: bool = False):
        self.model, self.remote = model, remote
        self.lm = nnsight_model(user_object, model.hf)

    def run(self, ids: torch.Tensor, noise: torch.Tensor | None, first: int,
            patches: list[tuple[Site, torch.Tensor, torch.Tensor]], pair: list[int] | None) -> torch.Tensor:
        """One forward pass of `ids` `[B, n]`: `noise` `[B, n_subject, d]` added to the embeddings
        from position `first`; for each (site, rows, tokens), in forward order, h[rows, tokens] ←
        h[0, tokens]. Returns the last-position logits `[B, vocab]` (`pair` None) or their
        log-softmax at the token ids `pair` `[B, len(pair)]`."""
        B, n = ids.shape
        lm, embed = self.lm, envoy(self.lm, self.model.embed.module)
        with torch.no_grad(), lm.trace(ids, remote=self.remote):
            if noise is not None:
                x = site_tensor(embed.output, B, n)
                x[:, first:first + noise.shape[1]] += noise.to(x.dtype)
            for site, rows, toks in patches:
                h = site_tensor(envoy(lm, site.module).output, B, n)
                h[rows, toks] = h[0, toks]
            logits = lm.output.logits[:, -1].float()  # the model's logits (after any soft-capping)
            out = (logits if pair is None else logits.log_softmax(-1)[:, pair]).save()
        return out.detach().cpu()

    def last_logits(self, ids: torch.Tensor, corrupted: Corrupted | None) -> torch.Tensor:
        """`Problem.build`'s runner: last-position logits of the clean or the corrupted rows."""
        noise = None if corrupted is None else corrupted.noise
        return self.run(ids, noise, 0 if corrupted is None else corrupted.first, [], None)


def run_nnsight(problem: Problem, cells: dict[str, torch.Tensor], runner: NNsightRunner,
                max_batch_tokens: int = 16384, progress: bool = True) -> dict[str, torch.Tensor]:
    """Scores of the restored runs at `cells[kind]` (bool `[n_layers, n_tokens]`), as the naive
    engine defines them, `{kind: [samples, n_layers, n_tokens]}`; each trace holds the clean row
    and as many cells × samples rows as fit `max_batch_tokens`."""
    c, S, n = problem.corrupted, problem.corrupted.samples, problem.n_tokens
    todo = [(kind, l, t) for kind, mask in cells.items() for l, t in mask.nonzero().tolist()]
    per_trace = max(1, (max_batch_tokens // n - 1) // S)
    metric = problem.metric
    pair = [metric.target, metric.foil if metric.foil is not None else metric.target]
    scores = problem.empty_scores()
    chunks = range(0, len(todo), per_trace)
    for i in tqdm(chunks, desc="trace (nnsight)", disable=not progress):
        chunk = todo[i:i + per_trace]
        ids = torch.cat([problem.ids, c.ids.expand(S, -1).repeat(len(chunk), 1)]).to(problem.ids.device)
        noise = None
        if c.noise is not None:
            noise = torch.cat([torch.zeros_like(c.noise[:1]), c.noise.repeat(len(chunk), 1, 1)])
        restore = defaultdict(lambda: ([], []))  # site → (rows, tokens)
        for j, (kind, l, t) in enumerate(chunk):
            for site in problem.restored_sites(kind, l):
                restore[site][0].extend(range(1 + j * S, 1 + (j + 1) * S))
                restore[site][1].extend([t] * S)
        patches = [(site, torch.tensor(rows), torch.tensor(toks)) for site, (rows, toks) in
                   sorted(restore.items(), key=lambda kv: (kv[0].layer, _ORDER[kv[0].name.split(".")[-1]]))]
        log_probs = runner.run(ids, noise, c.first, patches, pair)[1:]  # [cells × samples, 2]
        # prob = exp(log p_target); log_prob = log p_target; logit_diff = log p_target − log p_foil
        values = {"prob": log_probs[:, 0].exp(), "log_prob": log_probs[:, 0],
                  "logit_diff": log_probs[:, 0] - log_probs[:, 1]}[metric.name].view(len(chunk), S)
        for j, (kind, l, t) in enumerate(chunk):
            scores[kind][:, l, t] = values[j]
    return scores
