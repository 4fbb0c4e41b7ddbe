"""Knowledge-neuron editing (Dai et al., ACL 2022): change the value vectors of the neurons that
carry the fact.

    >>> tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
    ...         method="kn")                                  # update: old answer out, new answer in
    >>> tl.edit(model, ..., method="kn", params=KNParams(mode="erase"))

The knowledge neurons of the fact the model holds now (its top-1 answer to the prompt) are found
by `tracing.neurons.knowledge_neurons` over the prompt and the model's own prefixed versions of
it (the paper's several prompts of one fact). For each knowledge neuron i of layer l, with vᵢ its
value vector (column i of the MLP output weight) and t, t' the output embeddings of the old and
the new answer's first tokens:

    update:  vᵢ ← vᵢ − λ₁ t + λ₂ t'      (λ₁ = 1, λ₂ = 8, the paper's)
    erase:   vᵢ ← 0

One `ParamDelta` per layer that holds a knowledge neuron. No neuron above the thresholds: the
edit fails (ValueError), nothing changed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ...models import Model
from ...tracing.neurons import knowledge_neurons
from ..changes import Change, ParamDelta
from ..registry import Context, EditRefused, Method, register
from ..requests import Request
from ..toolkit.keys import context_templates


@dataclass
class KNParams:
    steps: int = 20          # integrated-gradients steps m
    threshold: float = 0.2   # coarse neurons: attribution > threshold · max
    share: float = 0.7       # knowledge neurons: coarse in more than this share of the prompts
    prompts: int = 3         # the prompt and prompts − 1 of the model's own prefixed versions of it
    mode: str = "update"     # "update" or "erase"
    lambda_old: float = 1.0
    lambda_new: float = 8.0

    def __post_init__(self) -> None:
        if self.mode not in ("update", "erase"):
            raise ValueError(f"mode must be 'update' or 'erase', got {self.mode!r}")
        if not isinstance(self.prompts, int) or self.prompts < 1:
            raise ValueError(f"prompts must be a positive int, got {self.prompts!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@register
class KnowledgeNeurons(Method):
    """Knowledge-neuron editing as a registered method."""

    name, title, family, Params, layers = "kn", "KN", "neuron", KNParams, "none"
    already_said = "refuse"  # there is no fact to move when the model already gives the new target

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: KNParams,
              ctx: Context) -> list[Change]:
        (request,) = requests
        t = time.perf_counter()
        old = int(model.next_token_logits(request.text)[0].argmax())
        new = model.target_ids(request.text, request.target)[0]
        templates = context_templates(model)[:params.prompts]
        prompts = [tpl.replace("{}", request.text) for tpl in templates]
        found = knowledge_neurons(model, prompts, old, steps=params.steps, threshold=params.threshold,
                                  share=params.share, progress=ctx.progress)
        ctx.info.update(neurons=found.neurons, old_answer=model.tokenizer.decode([old]),
                        seconds={"attribution": time.perf_counter() - t})
        if not found.neurons:
            raise EditRefused(f"no knowledge neurons for {request.text!r} → {found.target!r} above threshold "
                             f"{params.threshold} in more than {params.share:.0%} of {len(prompts)} prompts; nothing "
                             "was changed (lower KNParams.threshold or share)")
        E = model.hf.get_output_embeddings().weight.detach().float()                    # [vocab, d_model]
        value = -params.lambda_old * E[old] + params.lambda_new * E[new]                # [d_model]
        changes = []
        for layer in sorted({l for l, _ in found.neurons}):
            W = model.mlp_out_weight(layer).matrix.detach().float()                      # [d_model, d_mlp]
            update = torch.zeros_like(W)
            for _, i in [n for n in found.neurons if n[0] == layer]:
                update[:, i] = -W[:, i] if params.mode == "erase" else value
            changes.append(ParamDelta.mlp_out(model, layer, update))
        ctx.info["parameters_changed"] = len(found.neurons) * model.d_model
        return changes
