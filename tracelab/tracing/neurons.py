"""Knowledge neurons (Dai et al., ACL 2022): integrated-gradients attribution of a target's
probability to every MLP intermediate neuron — a second view of where a fact lives.

    >>> kn = knowledge_neurons(model, ["The Eiffel Tower is located in the city of",
    ...                                "Where is the Eiffel Tower? It is in the city of"], "Paris")
    >>> kn.neurons                     # [(layer, neuron), ...] shared by the prompts
    >>> kn.scores.shape                # [n_prompts, n_layers, d_mlp]
    >>> kn.figure().show()             # layer × neuron attribution (beside the causal trace)

For prompt x and the activation w⁽ˡ⁾ of the MLP's intermediate neurons at layer l (the `mlp_key`
site, at the last position), with P(ŵ) the probability of the target's first token when w⁽ˡ⁾
is replaced by ŵ:

    Attr(wᵢ⁽ˡ⁾) = wᵢ⁽ˡ⁾ · ∫₀¹ ∂P(α w⁽ˡ⁾)/∂wᵢ⁽ˡ⁾ dα ≈ wᵢ⁽ˡ⁾/m · Σₖ ∂P(k/m · w⁽ˡ⁾)/∂wᵢ⁽ˡ⁾    (Dai et al. eq. 3–4)

with m = 20 steps. Coarse neurons of a prompt: Attr > t · max Attr (t = 0.2); knowledge neurons:
the coarse neurons of more than a share p of the prompts (the paper's refining step). Rows of
(layer, step) run together in batches: a row scaling layer l changes nothing below l.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..io import load_tensors, save_tensors
from ..models.hooks import intervene
from ..models.loading import as_model


@dataclass
class NeuronAttribution:
    """Attribution scores `[n_prompts, n_layers, d_mlp]` (float32, units of probability), the
    prompts and target, and the knowledge neurons `[(layer, neuron)]` the thresholds selected."""

    prompts: list[str]
    target: str
    scores: torch.Tensor
    neurons: list[tuple[int, int]]
    settings: dict = field(default_factory=dict)

    def figure(self, **kwargs):
        """Heatmap of the mean attribution, layer × neuron, knowledge neurons circled."""
        from ..viz.neuron_figures import neuron_figure

        return neuron_figure(self, **kwargs)

    def save(self, path) -> str:
        meta = {"kind": "tracelab.NeuronAttribution", "prompts": self.prompts, "target": self.target,
                "neurons": self.neurons, "settings": self.settings}
        return str(save_tensors(path, {"scores": self.scores}, meta))

    @classmethod
    def load(cls, path) -> NeuronAttribution:
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "tracelab.NeuronAttribution":
            raise ValueError(f"{path} holds {meta.get('kind', 'something else')!r}, not a saved NeuronAttribution")
        return cls(meta["prompts"], meta["target"], tensors["scores"], [tuple(n) for n in meta["neurons"]],
                   meta["settings"])


def integrated_gradients(model, prompt: str, target_id: int, layers: Sequence[int], steps: int = 20,
                         rows_per_batch: int = 640) -> torch.Tensor:
    """Attr `[len(layers), d_mlp]` for one prompt (see the module doc).

    Every row (layer l, step k) differs from the clean run only at the last position, so the
    prefix runs once and its keys/values are shared by all rows: each row runs one token."""
    model = as_model(model)
    ids = model.tokenize(prompt)["input_ids"]                                       # [1, pos]
    n = ids.shape[1]
    with torch.no_grad(), model.native():
        with model.record([model.mlp_key(l) for l in layers]) as clean:
            model.hf(input_ids=ids)
        cache = None
        if n > 1:
            out = model.hf(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1)
            cache = out["cache"] if "cache" in out else out["past_key_values"]
    saved = [dict(vars(layer)) for layer in cache.layers] if cache is not None else []
    w = {l: clean[model.mlp_key(l).name][0, -1].float() for l in layers}          # [d_mlp] each
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=ids.device) / steps  # k/m, k = 1..m
    jobs = [(l, k) for l in layers for k in range(steps)]
    grads = {l: torch.zeros_like(w[l]) for l in layers}
    for start in range(0, len(jobs), rows_per_batch):
        chunk = jobs[start:start + rows_per_batch]
        R = len(chunk)
        scaled = torch.stack([alphas[k] * w[l] for l, k in chunk]).requires_grad_(True)   # [R, d_mlp]
        rows_of = {l: torch.tensor([i for i, (m, _) in enumerate(chunk) if m == l], device=ids.device)
                   for l in dict.fromkeys(l for l, _ in chunk)}

        def at(layer):
            def fn(x):  # x [R, 1, d_mlp]: this layer's rows get their scaled activation
                x = x.clone()
                x[rows_of[layer], -1] = scaled[rows_of[layer]].to(x.dtype)
                return x
            return fn

        for layer, state in zip(cache.layers if cache is not None else [], saved):  # the prefix, for R rows
            layer.__dict__.update({k: v.expand(R, *v.shape[1:]) if torch.is_tensor(v) and v.dim() == 4 else v
                                   for k, v in state.items()})
        try:
            with torch.enable_grad(), intervene(model, {model.mlp_key(l): at(l) for l in rows_of}):
                logits = model.hf(input_ids=ids[:, -1:].expand(R, 1),
                                  position_ids=torch.full((R, 1), n - 1, device=ids.device),
                                  use_cache=cache is not None, **model.cache_kwargs(cache) if cache is not None else {},
                                  ).logits[:, -1].float()
                prob = logits.softmax(-1)[:, target_id]
                (grad,) = torch.autograd.grad(prob.sum(), scaled)
        finally:
            for layer, state in zip(cache.layers if cache is not None else [], saved):
                layer.__dict__.update(state)
        for l, rows in rows_of.items():
            grads[l] += grad[rows].sum(0)
    return torch.stack([w[l] * grads[l] / steps for l in layers])


def knowledge_neurons(model, prompts: Sequence[str], target: str | int, *, steps: int = 20, threshold: float = 0.2,
                      share: float = 0.7, layers: Sequence[int] | None = None,
                      progress: bool = True) -> NeuronAttribution:
    """Attribute `target` (its first token, or a token id) after each prompt to every MLP neuron
    and select the knowledge neurons; see the module doc. Returns a `NeuronAttribution`."""
    model = as_model(model)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    if not 0 < threshold <= 1 or not 0 < share <= 1:
        raise ValueError(f"threshold and share are fractions in (0, 1], got {threshold}, {share}")
    layers = list(range(model.n_layers)) if layers is None else [model._check_layer(l) for l in layers]
    ids = [target if isinstance(target, int) else model.target_ids(p, target)[0] for p in prompts]
    scores = []
    for prompt, target_id in tqdm(list(zip(prompts, ids)), desc="knowledge neurons", disable=not progress):
        scores.append(integrated_gradients(model, prompt, target_id, layers, steps))
    scores = torch.stack(scores)                                                   # [prompts, layers, d_mlp]
    coarse = [{(layers[l], int(i)) for l, i in (s > threshold * s.max()).nonzero().tolist()} for s in scores]
    counts = Counter(n for c in coarse for n in c)
    neurons = sorted(n for n, c in counts.items() if c > share * len(prompts))
    full = torch.zeros(len(prompts), model.n_layers, model.d_mlp)
    full[:, layers] = scores.cpu()
    name = model.tokenizer.decode([target]) if isinstance(target, int) else target
    return NeuronAttribution(prompts, name, full, neurons,
                             {"steps": steps, "threshold": threshold, "share": share, "layers": layers,
                              "model": model.name})
