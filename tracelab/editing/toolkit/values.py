"""Values: the change δ at the subject's last token that makes the model say the target.

    >>> hp = ValueParams()
    >>> delta, init, info = optimise_values(model, requests, layer=5, site="mlp_out",
    ...                                     templates=context_templates(model), params=hp)
    >>> v_star = init + delta                       # ROME's v*: [n_requests, d_model]

For each request, δ is added to the site (`mlp_out(l)` for ROME, `resid(l)` for MEMIT's z) at
the subject's last token in every row — the prompt behind each context template followed by
the target's tokens, and the KL prompt "{subject} is a" — and minimises (ROME eq. 4)

    L(δ) = −mean_rows mean_j log p(target_j | row, δ) + λ_kl·KL(p(·|"{s} is a", δ) ‖ p₀) + λ_wd·‖δ‖/‖v₀‖²

with ‖δ‖ ≤ clamp·‖v₀‖ after every Adam step (v₀: the site's value on the plain prompt). A
request stops when its mean target NLL is below `stop_nll` (ROME stops on the whole loss, which
the decay term keeps above 0.05 on small models). `bf16=True` runs the forward/backward under
bfloat16 autocast (δ, the loss and Adam stay float32); the benchmark checks it does not hurt.

The fast engine runs only what δ can reach: positions before the subject's last token are
computed once (their keys/values cached), layers below the site are computed once (their
output replayed), and the LM head runs only at the target and KL positions. `engine="reference"`
is the plain full forward, kept as the definition the fast engine is tested against.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...models import Model
from ..requests import Request
from .compute import replay_below, training_mode, uses_bf16, weights_require_grad
from .keys import last_subject_index

KL_TEMPLATE = "{} is a"


@dataclass
class ValueParams:
    """Hyperparameters of the v*/z optimisation (defaults: ROME/MEMIT's for GPT-2 XL / GPT-J).

        >>> ValueParams(steps=30, lr=0.5)
    """

    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0
    stop_nll: float = 5e-2
    batch_requests: int = 16
    engine: Literal["fast", "reference"] = "fast"
    bf16: bool = True  # bf16 autocast where the device multiplies it natively (compute.uses_bf16)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Batch:
    """Rows of one chunk of requests, split at the subject's last token (index P of the padded
    prefix): prefix `[B, P]` left-padded, suffix `[B, S]` right-padded, and where to score."""

    prefix: torch.Tensor
    suffix: torch.Tensor
    mask: torch.Tensor        # [B, P + S]
    positions: torch.Tensor   # [B, P + S] position ids
    keep: torch.Tensor        # [B, n_keep] suffix positions whose logits are scored
    targets: torch.Tensor     # [B, n_keep] token to score there (-1: not scored)
    owner: torch.Tensor       # [B] which request of the chunk the row belongs to
    is_kl: torch.Tensor       # [B] bool: the KL row ("{subject} is a")

    def select(self, rows: torch.Tensor) -> "_Batch":
        """The rows where `rows` (bool `[B]`) is true."""
        return _Batch(*(getattr(self, f.name)[rows] for f in fields(self)))


def _rows(model: Model, requests: Sequence[Request], templates: Sequence[str]) -> _Batch:
    pad = model.tokenizer.pad_token_id
    rows = []  # (ids, last subject index, [(pos, token)], owner, is_kl)
    for i, r in enumerate(requests):
        for t in templates:
            ids, last = last_subject_index(model, t, r)
            target = model.target_ids(model.tokenizer.decode(ids), r.target)
            n = len(ids)
            rows.append((ids + target[:-1], last, [(n - 1 + j, tok) for j, tok in enumerate(target)], i, False))
        kl_ids, kl_last = last_subject_index(model, KL_TEMPLATE, Request(r.subject, KL_TEMPLATE, "x"))
        rows.append((kl_ids, kl_last, [(len(kl_ids) - 1, -1)], i, True))
    P = max(last for _, last, *_ in rows)
    S = max(len(ids) - last for ids, last, *_ in rows)
    K = max(len(score) for _, _, score, _, _ in rows)
    prefix, suffix, mask, keep, targets = [], [], [], [], []
    for ids, last, score, _, _ in rows:
        head, tail = ids[:last], ids[last:]
        prefix.append([pad] * (P - last) + head)
        suffix.append(tail + [pad] * (S - len(tail)))
        mask.append([0] * (P - last) + [1] * (len(head) + len(tail)) + [0] * (S - len(tail)))
        score = score + [(score[-1][0], -1)] * (K - len(score))
        keep.append([pos - last for pos, _ in score])
        targets.append([tok for _, tok in score])
    dev = model.device
    mask_t = torch.tensor(mask, device=dev)
    return _Batch(
        torch.tensor(prefix, device=dev, dtype=torch.long), torch.tensor(suffix, device=dev, dtype=torch.long),
        mask_t, (mask_t.cumsum(-1) - 1).clamp(min=0), torch.tensor(keep, device=dev),
        torch.tensor(targets, device=dev), torch.tensor([r[3] for r in rows], device=dev),
        torch.tensor([r[4] for r in rows], device=dev),
    )


class _Engine:
    """Runs the rows with δ added at suffix position 0 and returns logits `[B, n_keep, vocab]`."""

    def __init__(self, model: Model, b: _Batch, site, first: int, fast: bool):
        self.model, self.b, self.site, self.fast = model, b, site, fast
        P = b.prefix.shape[1]
        self.P, self.first = P, first
        if not fast:
            return
        with torch.no_grad():
            self.cache = None
            if P:
                out = model.hf(input_ids=b.prefix, attention_mask=b.mask[:, :P], position_ids=b.positions[:, :P],
                               use_cache=True, logits_to_keep=1)
                # renamed in transformers 5.24, where even asking for the old name logs a deprecation
                self.cache = out["cache"] if "cache" in out else out["past_key_values"]
                self.saved = [dict(vars(layer)) for layer in self.cache.layers]  # the prefix's state
            self.cache_arg = model.cache_kwargs(self.cache)  # the forward's name for it, looked up once
            recorded = {}
            if first > 0:
                below = model.layer(first - 1)
                handle = below.register_forward_hook(lambda m, a, o: recorded.setdefault("out", o))
                try:
                    self._forward(None, use_replay=False)
                finally:
                    handle.remove()
            self.below = recorded.get("out")

    def _forward(self, delta_rows, use_replay=True):
        m, b = self.model, self.b
        patch = {} if delta_rows is None else {self.site: _add_at_first(delta_rows)}
        if self.fast:
            replay = replay_below(m, self.first, self.below) if use_replay and self.first else contextlib.nullcontext()
            with replay, m.patch(patch):
                out = m.hf(input_ids=b.suffix, attention_mask=b.mask, position_ids=b.positions[:, self.P:],
                           use_cache=self.cache is not None, logits_to_keep=b.keep, **self.cache_arg)
            if self.cache is not None:  # back to the prefix (update() concatenates: the old tensors are intact)
                for layer, saved in zip(self.cache.layers, self.saved):
                    layer.__dict__.update(saved)
            return out.logits
        # reference: the whole right-padded row, δ at the subject's last token
        ids, mask, shift = _unpadded(b)
        with m.patch({} if delta_rows is None else {self.site: _add_at(delta_rows, shift + self.P)}):
            out = m.hf(input_ids=ids, attention_mask=mask)
        return torch.take_along_dim(out.logits, (b.keep + self.P + shift[:, None])[..., None], dim=1)

    def logits(self, delta_rows):
        return self._forward(delta_rows)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the rows where `rows` (bool `[B]`) is true: finished requests stop costing."""
        B = len(self.b.owner)
        self.b = self.b.select(rows)
        if not self.fast:
            return
        pick = lambda x: x[rows] if torch.is_tensor(x) and x.dim() and x.shape[0] == B else x  # noqa: E731
        if self.cache is not None:
            self.saved = [{k: pick(v) for k, v in saved.items()} for saved in self.saved]
            for layer, saved in zip(self.cache.layers, self.saved):
                layer.__dict__.update(saved)
        self.below = tuple(map(pick, self.below)) if isinstance(self.below, tuple) else pick(self.below)


def _unpadded(b: _Batch):
    """Rows right-padded instead of left-padded: ids `[B, P+S]`, mask, and each row's shift."""
    full = torch.cat([b.prefix, b.suffix], 1)
    lead = (b.mask.cumsum(-1) == 0).sum(-1)  # left padding per row
    idx = (torch.arange(full.shape[1], device=full.device)[None] + lead[:, None]).clamp(max=full.shape[1] - 1)
    ids = torch.take_along_dim(full, idx, 1)
    mask = torch.take_along_dim(b.mask, idx, 1) * (torch.arange(full.shape[1], device=full.device)[None]
                                                     < (full.shape[1] - lead)[:, None])
    return ids, mask, -lead


def _add_at_first(delta_rows: torch.Tensor):
    def fn(x: torch.Tensor) -> torch.Tensor:  # x [B, S, d]
        return torch.cat([x[:, :1] + delta_rows[:, None].to(x.dtype), x[:, 1:]], 1)
    return fn


def _add_at(delta_rows: torch.Tensor, at: torch.Tensor):
    def fn(x: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(at, x.shape[1]).to(x.dtype)  # [B, pos]
        return x + onehot[..., None] * delta_rows[:, None].to(x.dtype)
    return fn


def says_target(model: Model, request: Request) -> bool:
    """True when the model's greedy continuation of the request's prompt is its target (all tokens)."""
    ((rows, ids),) = model.target_log_probs([request.text], [request.target])
    return rows.argmax(-1).tolist() == ids


def optimise_values(
    model: Model, requests: Sequence[Request], layer: int, site: Literal["mlp_out", "resid"],
    templates: Sequence[str], params: ValueParams | None = None, progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """δ for each request (see the module docstring), in chunks of `params.batch_requests`.

        >>> delta, v0, info = optimise_values(model, [req], 5, "mlp_out", ["{}"])

    Returns `delta [n, d_model]` and `v0 [n, d_model]` (the site's value at the subject's last
    token of the plain prompt), float32, and `info` (`loss`, `nll`, `steps`, `seconds`).
    ValueError if the loss becomes NaN (nothing is changed: δ is not applied here).
    """
    hp = params or ValueParams()
    if site not in ("mlp_out", "resid"):
        raise ValueError(f"site must be 'mlp_out' (ROME) or 'resid' (MEMIT), got {site!r}")
    if list(templates[:1]) != ["{}"]:
        raise ValueError(f"the first template must be the plain prompt '{{}}', got {list(templates[:1])}")
    site_obj = model.mlp_out(layer) if site == "mlp_out" else model.resid(layer)
    first = layer if site == "mlp_out" else layer + 1  # lowest layer δ can change
    deltas, inits, info = [], [], {"loss": [], "nll": [], "steps": []}
    start = time.perf_counter()
    # weights require grad so that autocast caches its bf16 weight casts (see compute)
    with weights_require_grad(model, uses_bf16(model, hp.bf16)):
        chunks = range(0, len(requests), hp.batch_requests)
        for i in tqdm(chunks, desc=f"v*/z ({site} {layer})", disable=not progress or len(chunks) < 2):
            d, v0, chunk_info = _optimise_chunk(model, requests[i:i + hp.batch_requests], site_obj, first,
                                                templates, hp)
            deltas.append(d), inits.append(v0)
            for k in info:
                info[k] += chunk_info[k]
    info["seconds"] = time.perf_counter() - start
    return torch.cat(deltas), torch.cat(inits), info


def _optimise_chunk(model, requests, site, first, templates, hp):
    with training_mode(model, hp.bf16):  # one autocast region per chunk
        return _optimise_rows(model, requests, _rows(model, requests, templates), site, first, hp)


def _optimise_rows(model, requests, b, site, first, hp):
    n = len(requests)
    engine = _Engine(model, b, site, first, fast=hp.engine == "fast")
    with torch.no_grad(), model.record([site]) as rec:
        logits0 = engine.logits(None)
    if engine.fast:
        v_rows = rec[site.name][:, 0].float()
    else:
        ids, mask, shift = _unpadded(b)
        v_rows = rec[site.name][torch.arange(len(shift)), shift + engine.P].float()
    plain = torch.tensor([j for j in range(len(b.owner)) if j == 0 or b.owner[j] != b.owner[j - 1]])
    v0 = v_rows[plain]  # first row of each request = the plain "{}" template
    kl_init = logits0[b.is_kl, 0].float().log_softmax(-1)  # [n, vocab], request i's KL row is the i-th
    n_rows = torch.bincount(b.owner[~b.is_kl], minlength=n).float()  # rewrite rows per request

    delta = torch.zeros(n, model.d_model, device=model.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    done = torch.zeros(n, dtype=torch.bool, device=model.device)
    last_loss, last_nll = torch.zeros(n), torch.zeros(n)
    steps = torch.zeros(n, dtype=torch.long)
    max_norm = hp.clamp_norm * v0.norm(dim=-1)
    for step in range(hp.steps):
        b, active = engine.b, ~done  # the rows of the requests still being optimised
        logp = engine.logits(delta[b.owner]).float().log_softmax(-1)
        # −mean_j log p(target_j) per rewrite row, then the mean over each request's rows
        scored, rewrite, kl_rows = b.targets >= 0, ~b.is_kl, b.is_kl
        tok_logp = torch.take_along_dim(logp, b.targets.clamp(min=0)[..., None], -1)[..., 0] * scored
        row_nll = -tok_logp.sum(-1) / scored.sum(-1).clamp(min=1)
        nll = torch.zeros(n, device=model.device).index_add(0, b.owner[rewrite], row_nll[rewrite]) / n_rows
        kl_row = F.kl_div(kl_init[b.owner[kl_rows]], logp[kl_rows, 0], log_target=True, reduction="none").sum(-1)
        kl = torch.zeros(n, device=model.device).index_add(0, b.owner[kl_rows], kl_row)
        decay = delta.norm(dim=-1) / v0.norm(dim=-1) ** 2
        loss = nll + hp.kl_factor * kl + hp.weight_decay * decay  # [n], meaningful where active
        if not torch.isfinite(loss[active]).all():
            bad = [requests[i].subject for i in torch.nonzero(active & ~torch.isfinite(loss))[:, 0].tolist()]
            raise ValueError(f"NaN/inf loss in the v*/z optimisation at step {step} for {bad}; no weight was "
                             "changed. Lower the learning rate (lr) or check the model's dtype")
        last_loss[active.cpu()] = loss.detach()[active].float().cpu()
        last_nll[active.cpu()] = nll.detach()[active].cpu()
        steps += active.cpu().long()
        done = done | (active & (nll.detach() < hp.stop_nll))  # p(target) ≈ e^-0.05 ≈ 0.95: stop
        if done.all() or step == hp.steps - 1:
            break
        kept = delta.detach()[done].clone()
        opt.zero_grad()
        delta.grad, = torch.autograd.grad(loss[~done].sum(), [delta])  # δ only, never the weights
        opt.step()
        with torch.no_grad():  # norm bound ‖δ‖ ≤ clamp·‖v₀‖, and freeze requests that are done
            scale = (max_norm / delta.norm(dim=-1).clamp(min=1e-12)).clamp(max=1)
            delta.mul_(scale[:, None])
            delta[done] = kept
        if (done & active).any():  # newly finished: their rows leave the batch
            engine.select(~done[engine.b.owner])
    return delta.detach().float(), v0, {"loss": last_loss.tolist(), "nll": last_nll.tolist(),
                                        "steps": steps.tolist()}
