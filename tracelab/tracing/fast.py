"""The fast engine: walk the decoder once per restored token, only where a restoration can reach.

    >>> scores = run_fast(problem, cells)            # same as run_naive, 3.6× fewer FLOPs here

For one restored token t, every restored run (kind, layer l, sample s) equals the corrupted run
below the layer where it first differs (its *join* layer J) and at every position before t. So:

- run clean and corrupted once, keeping each layer's input and the corrupted keys/values;
- a row joins the walk at layer J as the corrupted state of positions t..n-1 (`resid`: J = l + 1
  with h[t] ← clean; `mlp`/`attn`: J = lo + 1, the layer after its window's first, with h[t] ←
  that layer's output restored at t, computed once for all t; see `plan_rows` for windows that
  share their start);
- each layer runs only on the rows that have joined and only on positions ≥ t, attending to the
  corrupted run's keys/values for positions < t; the last layer only on what the head reads;
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
    """Restored runs for one token, sorted by join layer J, each `[rows]`: kind id, layer, sample,
    J, window [lo, hi), `source` (the row whose state this one takes at J, or -1: the corrupted
    run's), `group` (rows linked by sources; batches never split a group) and `enter` (the row
    joins at J = lo + 1 with layer lo's restored output at t, computed once per engine)."""

    kind: torch.Tensor
    layer: torch.Tensor
    sample: torch.Tensor
    join: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    source: torch.Tensor
    group: torch.Tensor
    enter: torch.Tensor

    def __len__(self) -> int:
        return len(self.kind)

    def select(self, keep: torch.Tensor) -> "Rows":
        """The rows where `keep` (bool) is true, in order; sources renumbered (kept rows' sources
        must be kept too)."""
        position = torch.cumsum(keep, 0) - 1
        rows = Rows(*(getattr(self, f)[keep] for f in _FIELDS))
        rows.source = torch.where(rows.source >= 0, position[rows.source.clamp(min=0)], -1)
        return rows

    def batches(self, size: int) -> list["Rows"]:
        """Consecutive whole groups of about `size` rows (at least one group) per batch."""
        counts = torch.bincount(self.group).tolist()
        out, first, taken = [], 0, 0
        for g, c in enumerate(counts):
            if taken and taken + c > size:
                out.append(self.select((self.group >= first) & (self.group < g)))
                first, taken = g, 0
            taken += c
        out.append(self.select(self.group >= first))
        return out


_FIELDS = ("kind", "layer", "sample", "join", "lo", "hi", "source", "group", "enter")


def plan_rows(problem: Problem, cells: dict[str, torch.Tensor], t: int) -> Rows:
    """The restored runs needed at token `t`, sorted by the layer they join at.

    - An `mlp`/`attn` row changes nothing but position t in the first layer of its window (the
      layer's other positions read unchanged inputs), so it enters at lo + 1 with that layer's
      restored output at t — the same for every cell whose window starts at lo.
    - Windows clipped at layer 0 start together: two such cells restore the same layers up to the
      end of the shorter window, so a row of such a chain joins where the previous cell's window
      ends, taking that row's state (`source`) instead of recomputing it."""
    S = problem.corrupted.samples
    plan, source_cell = [], []  # plan: (kind, layer, join, lo, hi); source_cell: -1 or a cell index
    for name, mask in cells.items():
        for i, l in enumerate(mask[:, t].nonzero().flatten().tolist()):
            if name == "resid":
                plan.append((KIND_IDS[name], l, l + 1, l + 1, l + 1)), source_cell.append(-1)
                continue
            w, c = problem.window_layers(l), len(plan)
            src = c - 1 if i and plan[c - 1][3] == w.start and plan[c - 1][4] <= w.stop else -1
            join = plan[src][4] if src >= 0 else w.start + 1
            while src >= 0 and plan[src][2] == join:  # it joins with us: its state is not made yet
                src = source_cell[src]  # its source's, or -1: it enters at lo + 1, and so do we
            plan.append((KIND_IDS[name], l, join, w.start, w.stop)), source_cell.append(src)
    if not plan:
        empty = torch.zeros(0, dtype=torch.long)
        return Rows(*[empty] * len(_FIELDS))
    kind, layer, join, lo, hi = (torch.tensor(c).repeat_interleave(S) for c in zip(*plan))
    src = torch.tensor(source_cell)
    chain_start = torch.cummax(torch.where(src >= 0, -1, torch.arange(len(plan))), 0).values
    sample = torch.arange(S).repeat(len(plan))
    # row = cell · S + sample; a chained row's source is its source cell's row of the same sample
    source = torch.where(src.repeat_interleave(S) >= 0, src.repeat_interleave(S) * S + sample, -1)
    group = chain_start.repeat_interleave(S) * S + sample
    enter = (kind != KIND_IDS["resid"]) & (source < 0)
    order = torch.argsort(join, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    rows = Rows(kind, layer, sample, join, lo, hi, source, group, enter)
    rows = Rows(*(getattr(rows, f)[order] for f in _FIELDS))
    rows.source = torch.where(rows.source >= 0, rank[rows.source.clamp(min=0)], -1)
    rows.group = torch.unique(rows.group, return_inverse=True)[1]
    return rows


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
        # entered[kind][l] [samples, n, d]: layer l's output with that sublayer restored at every
        # position; within one layer a position's output reads only its own restore, so position
        # t is the state of a row whose window starts at l, right after l
        everyone = torch.ones(p.corrupted.samples, dtype=torch.bool, device=h.device)
        self.entered = {kind: [w.run(l, self.corr_in[l], 0, None, {kind: (everyone, self.clean_sub[kind][l])})[0]
                               for l in range(L)] for kind in ("mlp", "attn") if kind in p.kinds}

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
            for chunk in rows.batches(max(1, max_batch_tokens // (p.n_tokens - t))):
                values = self._walk(chunk, t).float().cpu()
                for kid in chunk.kind.unique().tolist():
                    sel = chunk.kind == kid
                    scores[names[kid]][chunk.sample[sel], chunk.layer[sel], t] = values[sel]
        return scores

    def _walk(self, rows: Rows, t: int) -> torch.Tensor:
        """Walk `rows` (sorted by join layer) from their join layers to the head → metric `[rows]`.
        The rows live in one buffer `[rows, n - t, d]`; layer j runs on the rows joined so far."""
        p, L = self.problem, self.problem.n_layers
        first = self.corr_in[0]
        h = torch.empty(len(rows), p.n_tokens - t, first.shape[-1], dtype=first.dtype, device=first.device)
        kind, sample, source = rows.kind.to(first.device), rows.sample.to(first.device), rows.source.to(first.device)
        enter = rows.enter.to(first.device)
        lo, hi = rows.lo.to(first.device), rows.hi.to(first.device)
        joined = torch.searchsorted(rows.join, torch.arange(L + 1), right=True).tolist()  # rows with J ≤ j
        for j in range(int(rows.join[0]), L + 1):
            a, b = joined[j - 1] if j else 0, joined[j]
            if b > a:  # joining: the corrupted input of layer j at positions ≥ t (resid: x[t] ← clean),
                h[a:b] = self.corr_in[j][sample[a:b], t:]  # or a chained row's source's state
                shared = source[a:b] >= 0
                if shared.any():
                    h[a:b][shared] = h[source[a:b][shared]]
                for name in ("mlp", "attn"):
                    entering = enter[a:b] & (kind[a:b] == KIND_IDS[name])
                    if entering.any():
                        h[a:b, 0][entering] = self.entered[name][j - 1][sample[a:b][entering], t]
                restore_(h[a:b, :1], self.clean_in[j][t:t + 1].to(h.dtype),
                         torch.where(kind[a:b] == KIND_IDS["resid"], 0, -1)[:, None])
            if j == L:
                break
            restore = {}
            for name in ("mlp", "attn"):
                rows_in = (kind[:b] == KIND_IDS[name]) & (lo[:b] <= j) & (j < hi[:b])
                if rows_in.any():
                    restore[name] = (rows_in, self.clean_sub[name][j][t])
            prefix = None
            if t > 0:
                k, v = self.corr_kv[j]
                prefix = (k[:, :, :t][sample[:b]], v[:, :, :t][sample[:b]])
            last = j == L - 1  # under the head: only the last position's output is read
            out, _ = self.walker.run(j, h[:b], t, prefix, restore, last_only=last, inplace=True)
            written = h[:b, -1:] if last else h[:b]
            if out.data_ptr() != written.data_ptr():  # the lean layers update h in place
                written.copy_(out)
        return torch.cat([p.metric(self.walker.head(x)) for x in h[:, -1].split(256)])


def run_fast(problem: Problem, cells: dict[str, torch.Tensor], progress: bool = True,
             max_batch_tokens: int = 16384) -> dict[str, torch.Tensor]:
    """`FastEngine(problem).run(cells)` under no_grad; see the module doc."""
    with torch.no_grad():
        return FastEngine(problem).run(cells, progress, max_batch_tokens)
