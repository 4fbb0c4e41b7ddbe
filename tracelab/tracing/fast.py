"""The fast engine: walk the decoder once per restored token, only where a restoration can reach.

    >>> scores = run_fast(problem, cells)            # same as run_naive, 4–5× fewer FLOPs

For one restored token t, every restored run (kind, layer l, sample s) equals the corrupted run
below the layer where it first differs (its *join* layer J) and at every position before t. So:

- run clean and corrupted once, keeping each layer's input and the corrupted keys/values;
- a row joins the walk at layer J as the corrupted state of positions t..n-1
  (`resid`: J = l + 1 with h[t] ← clean; `mlp`/`attn`: J = first layer of the window);
- each layer runs only on the rows that have joined and only on positions ≥ t, attending to the
  corrupted run's keys/values for positions < t;
- inside a row's window the MLP/attention output at t is replaced by the clean one;
- the LM head runs only on the last position.

Rows of all kinds, layers and samples for one t are packed into batches of at most
`max_batch_tokens` row-positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..kernels import restore_
from .problem import Problem
from .walk import Walker

KIND_IDS = {"resid": 0, "mlp": 1, "attn": 2}


@dataclass
class Rows:
    """Restored runs for one token: kind id, layer, sample, join layer J, window [lo, hi), each `[rows]`."""

    kind: torch.Tensor
    layer: torch.Tensor
    sample: torch.Tensor
    join: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def __len__(self) -> int:
        return len(self.kind)

    def __getitem__(self, index) -> "Rows":
        return Rows(*(getattr(self, f)[index] for f in ("kind", "layer", "sample", "join", "lo", "hi")))


def plan_rows(problem: Problem, cells: dict[str, torch.Tensor], t: int) -> Rows:
    """The restored runs needed at token `t`, sorted by the layer they join at."""
    kind, layer, lo, hi, join = [], [], [], [], []
    for name, mask in cells.items():
        for l in mask[:, t].nonzero().flatten().tolist():
            window = problem.window_layers(l) if name != "resid" else range(l + 1, l + 1)
            kind.append(KIND_IDS[name]), layer.append(l), lo.append(window.start), hi.append(window.stop)
            join.append(l + 1 if name == "resid" else window.start)
    S = problem.corrupted.samples
    per_cell = [torch.tensor(v, dtype=torch.long).repeat_interleave(S) for v in (kind, layer, join, lo, hi)]
    sample = torch.arange(S).repeat(len(kind))
    rows = Rows(per_cell[0], per_cell[1], sample, per_cell[2], per_cell[3], per_cell[4])
    return rows[torch.argsort(rows.join, stable=True)]


def _restore_first(mask: torch.Tensor, value: torch.Tensor):
    """Site patch: rows in `mask` get `value` `[d]` at their first walked position (the token t)."""
    source = torch.where(mask, 0, -1)[:, None]  # [rows, 1]: row ← clean run 0 at position 0

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.view(len(mask), -1, x.shape[-1])  # OPT runs its MLP on [rows * pos, d]
        restore_(y[:, :1], value.to(y.dtype)[None], source)  # Triton on GPU, torch on CPU
        return x
    return fn


class FastEngine:
    """Clean and corrupted states of one problem, and the walk over restored rows.

        >>> engine = FastEngine(problem); scores = engine.run(cells)
    """

    def __init__(self, problem: Problem):
        self.problem = p = problem
        model = p.model
        self.walker = w = Walker(model, p.ids)
        clean = p.clean_sites()
        L = p.n_layers
        # input of layer j (j = L: the final residual) [n, d]; sublayer outputs [n, d]
        self.clean_in = [w.clean_input[0]] + [clean[model.resid(l).name][0] for l in range(L)]
        self.clean_sub = {"mlp": [clean[model.mlp_out(l).name][0] for l in range(L)],
                          "attn": [clean[model.attn_out(l).name][0] for l in range(L)]}
        h = w.input_of(p.corrupted.ids, p.corrupted.embed_fn)  # [samples, n, d]
        self.corr_in, self.corr_kv = [h], []
        for l in range(L):
            h, kv = w.run(l, h, start=0)
            self.corr_in.append(h)
            self.corr_kv.append(kv)

    def run(self, cells: dict[str, torch.Tensor], progress: bool = True,
            max_batch_tokens: int = 16384) -> dict[str, torch.Tensor]:
        """Scores of the restored runs at `cells[kind]` (bool `[n_layers, n_tokens]`); other cells
        hold the corrupted score. Returns `{kind: [samples, n_layers, n_tokens]}` float32."""
        p = self.problem
        scores = p.empty_scores()
        names = {v: k for k, v in KIND_IDS.items()}
        tokens = sorted({t for mask in cells.values() for t in mask.any(0).nonzero().flatten().tolist()})
        for t in tqdm(tokens, desc="trace", disable=not progress):
            rows = plan_rows(p, cells, t)
            size = max(1, max_batch_tokens // (p.n_tokens - t))
            for start in range(0, len(rows), size):
                chunk = rows[start:start + size]
                values = self._walk(chunk, t).float().cpu()
                for kid in chunk.kind.unique().tolist():
                    sel = chunk.kind == kid
                    scores[names[kid]][chunk.sample[sel], chunk.layer[sel], t] = values[sel]
        return scores

    def _walk(self, rows: Rows, t: int) -> torch.Tensor:
        """Walk `rows` (sorted by join layer) from their join layers to the head → metric `[rows]`."""
        p, model, L = self.problem, self.problem.model, self.problem.n_layers
        device = self.clean_in[0].device
        h, n_active = None, 0
        kind, sample = rows.kind.to(device), rows.sample.to(device)
        lo, hi = rows.lo.to(device), rows.hi.to(device)
        for j in range(int(rows.join[0]), L + 1):
            joining = (rows.join == j).nonzero().flatten()
            if len(joining):  # x = corrupted input of layer j at positions ≥ t (resid: x[t] ← clean)
                x = self.corr_in[j][sample[joining], t:].clone()
                source = torch.full(x.shape[:2], -1, device=device)
                source[kind[joining] == KIND_IDS["resid"], 0] = 0
                restore_(x, self.clean_in[j][t:].to(x.dtype), source)
                h = x if h is None else torch.cat([h, x])
                n_active += len(joining)
            if j == L:
                break
            if h is None:
                continue
            active = slice(0, n_active)
            patches = {}
            for name, site in (("mlp", model.mlp_out(j)), ("attn", model.attn_out(j))):
                mask = (kind[active] == KIND_IDS[name]) & (lo[active] <= j) & (j < hi[active])
                if mask.any():
                    patches[site] = _restore_first(mask, self.clean_sub[name][j][t])
            prefix = None
            if t > 0:
                k, v = self.corr_kv[j]
                prefix = (k[:, :, :t][sample[active]], v[:, :, :t][sample[active]])
            h, _ = self.walker.run(j, h, t, prefix, patches)
        return p.metric(self.walker.head(h[:, -1]))


def run_fast(problem: Problem, cells: dict[str, torch.Tensor], progress: bool = True,
             max_batch_tokens: int = 16384) -> dict[str, torch.Tensor]:
    """`FastEngine(problem).run(cells)` under no_grad; see the module doc."""
    with torch.no_grad():
        return FastEngine(problem).run(cells, progress, max_batch_tokens)
