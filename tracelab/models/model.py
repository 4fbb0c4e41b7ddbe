"""`Model`: a transformers causal LM + its tokenizer + where things are (sites).

    >>> model = tracelab.load_model()              # the embedded SmolLM2-135M
    >>> model.predict("The Eiffel Tower is located in the city of", k=1)
    [(' Paris', 0.70...)]
    >>> with model.record([model.mlp_key(5)]) as cache:
    ...     model.hf(**model.tokenize("The Eiffel Tower"))
    >>> cache["blocks.5.mlp_key"].shape           # [1, 4, d_mlp]
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from . import hooks, prompts, text
from .architectures import Architecture, architecture_for
from .hooks import Site, SiteFn
from .wrappers import inner_module, is_transformer_lens, transformers_forwards


@dataclass(frozen=True)
class OutWeight:
    """The MLP output projection of one layer, with its storage layout made explicit.

    `param` is the module's weight as stored: `layout="out_in"` is `nn.Linear`'s
    `[d_model, d_mlp]`, `"in_out"` is GPT-2 `Conv1D`'s `[d_mlp, d_model]`. Editors use
    `matrix`, always `[d_model, d_mlp]` (mlp_out = matrix @ mlp_key + bias), a view that
    writes through to `param`.
    """

    param: nn.Parameter
    layout: Literal["out_in", "in_out"]
    bias: torch.Tensor | None
    name: str

    @property
    def matrix(self) -> torch.Tensor:
        """`[d_model, d_mlp]` view of the stored weight (no copy; in-place edits write through)."""
        return self.param.data if self.layout == "out_in" else self.param.data.T


class Model:
    """A causal LM with named sites. Build it with `tracelab.load_model(...)`.

    Attributes: `hf` (the transformers model, eval mode), `tokenizer`, `arch`
    (`Architecture`), `name` (an id used in caches and provenance), `n_layers`, `d_model`,
    `d_mlp`. Sites: `embed`, `resid(l)`, `attn_out(l)`, `mlp_out(l)`, `mlp_key(l)`.
    """

    def __init__(self, hf: nn.Module, tokenizer, name: str | None = None):
        config = hf.config
        self.arch: Architecture = architecture_for(config.model_type)
        self.hf = hf.eval()
        hf._tracelab_model = self  # load_model/as_model on this module give back this Model
        self.tokenizer = tokenizer
        self._native_depth = 0  # nesting of native() blocks
        # Applied in-context changes (`editing.changes.PromptContext`): each rewrites the prompts
        # the model is asked through `query_text`, in order.
        self.query_rewriters: list = []
        if tokenizer.pad_token_id is None:  # batching needs a pad id; padding is always masked
            tokenizer.pad_token = tokenizer.eos_token
        self.name = name or getattr(config, "_name_or_path", "") or config.model_type
        self.n_layers = len(hf.get_submodule(self.arch.layers))
        self.d_model = hf.get_submodule(self.arch.embed).weight.shape[1]
        self.d_mlp = self.mlp_out_weight(0).matrix.shape[1]

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, family={self.arch.family}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, d_mlp={self.d_mlp}, dtype={self.dtype}, device={self.device})"
        )

    # ---- where things are -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.hf.get_submodule(self.arch.embed).weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_submodule(self.arch.embed).weight.dtype

    @property
    def parallel(self) -> bool:
        """True when attention and MLP read the same block input (GPT-J, Pythia)."""
        return self.arch.parallel and getattr(self.hf.config, "use_parallel_residual", True)

    @contextmanager
    def native(self) -> Iterator[None]:
        """Inside the block the forward computes with the transformers modules even where a
        TransformerLens bridge wraps them (`wrappers.transformers_forwards`: the bridges'
        attention ignores transformers 5.24's KV cache, so generation through them breaks); a
        no-op for other models, and for nested blocks. Every tracelab forward runs inside it
        (`hooks.intervene` enters it); `steer`, whose block runs the user's own calls, does not.

            >>> with model.native():
            ...     out = model.hf.generate(**batch)
        """
        if self._native_depth or not is_transformer_lens(self.hf.get_submodule(self.arch.embed)):
            self._native_depth += 1
            try:
                yield
            finally:
                self._native_depth -= 1
            return
        self._native_depth += 1
        try:
            with transformers_forwards(self.hf):
                yield
        finally:
            self._native_depth -= 1

    def cache_kwargs(self, cache) -> dict:
        """`{name: cache}` for the model's forward: transformers ≥ 5.24 calls the KV cache `cache`
        (and deprecates `past_key_values`), older versions `past_key_values`."""
        params = inspect.signature(self.hf.forward).parameters
        return {"cache" if "cache" in params else "past_key_values": cache}

    def _check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range: this model has layers 0..{self.n_layers - 1}")
        return layer % self.n_layers

    def _layer_path(self, layer: int, part: str = "") -> str:
        return f"{self.arch.layers}.{self._check_layer(layer)}" + (f".{part}" if part else "")

    def layer(self, layer: int) -> nn.Module:
        """The transformers decoder block of `layer` (beneath a TransformerLens bridge's wrapper,
        whose forward calls it; see `wrappers`). Hooks on sites stay on the outer modules."""
        # Looked up each time: wrappers (a TransformerLens bridge) may replace blocks in place.
        return inner_module(self.hf.get_submodule(self._layer_path(layer)))

    def module(self, path: str) -> nn.Module:
        """The transformers module at dotted `path` of `hf`, beneath any bridge wrapper: where
        its weights are (`model.module(model.arch.final_norm).weight`)."""
        return inner_module(self.hf.get_submodule(path))

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter at dotted `name` of `hf` (`"model.layers.4.mlp.down_proj.weight"`),
        beneath any bridge wrapper. ValueError naming what exists when there is none."""
        path, _, attr = name.rpartition(".")
        try:
            module = self.module(path) if path else self.hf
        except AttributeError:
            module = None
        value = getattr(module, attr, None) if module is not None else None
        if not isinstance(value, torch.Tensor):
            near = [n for n, _ in self.hf.named_parameters() if n.endswith(attr)][:4]
            raise ValueError(f"{self.name} has no parameter {name!r} (parameters named like it: {near})")
        return value

    def query_text(self, prompts_: str | Sequence[str]) -> list[str]:
        """The texts the model is asked for `prompts_`: each applied in-context change (see
        `query_rewriters`) rewrites them in order; the prompts themselves when there is none.

            >>> model.query_text("The Eiffel Tower is in")    # ['The Eiffel Tower is in'], or after IKE's demonstrations
        """
        texts = [prompts_] if isinstance(prompts_, str) else list(prompts_)
        for rewriter in self.query_rewriters:
            texts = [rewriter.query(t) for t in texts]
        return texts

    @property
    def embed(self) -> Site:
        """Token embeddings (output of the embedding module) `[batch, pos, d_model]`."""
        return Site("embed", self.arch.embed)

    def resid(self, layer: int) -> Site:
        """Block output (residual stream after the block) `[batch, pos, d_model]`."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.resid", self._layer_path(l), layer=l)

    def attn_out(self, layer: int) -> Site:
        """Attention output before it joins the residual `[batch, pos, d_model]`."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.attn_out", self._layer_path(l, self.arch.attn), layer=l)

    def mlp_out(self, layer: int) -> Site:
        """MLP output before it joins the residual (Gemma 2/3: before the post-MLP norm) `[batch, pos, d_model]`."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.mlp_out", self._layer_path(l, self.arch.mlp), layer=l)

    def mlp(self, layer: int) -> Site:
        """The MLP as a function, for patches that read its input and change its output
        (`fn(x [batch, pos, d_model], y [batch, pos, d_model]) -> y'`: T-Patcher's neurons)."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.mlp", self._layer_path(l, self.arch.mlp), io="call", layer=l)

    def mlp_out_proj(self, layer: int) -> Site:
        """The MLP's output projection as a function, for patches (`fn(k [batch, pos, d_mlp],
        v [batch, pos, d_model]) -> v'`: WISE's side memory)."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.mlp_out_proj", self._layer_path(l, self.arch.mlp_out_proj), io="call", layer=l)

    def mlp_key(self, layer: int) -> Site:
        """Input of the MLP output projection, ROME's key k `[batch, pos, d_mlp]`."""
        l = self._check_layer(layer)
        return Site(f"blocks.{l}.mlp_key", self._layer_path(l, self.arch.mlp_out_proj), io="input", layer=l)

    def site(self, name: str | Site) -> Site:
        """The site named `name` (`"embed"` or `"blocks.{l}.{resid|attn_out|mlp_out|mlp_key|mlp|mlp_out_proj}"`)."""
        if isinstance(name, Site):
            return name
        if name == "embed":
            return self.embed
        parts = name.split(".")
        kinds = {"resid": self.resid, "attn_out": self.attn_out, "mlp_out": self.mlp_out, "mlp_key": self.mlp_key,
                 "mlp": self.mlp, "mlp_out_proj": self.mlp_out_proj}
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in kinds:
            raise ValueError(
                f"unknown site {name!r}: expected 'embed' or 'blocks.<layer>.<kind>' with kind in {sorted(kinds)}"
            )
        return kinds[parts[2]](int(parts[1]))

    def mlp_out_weight(self, layer: int) -> OutWeight:
        """The weight editors change at `layer`, with its layout explicit (see `OutWeight`)."""
        path = self._layer_path(layer, self.arch.mlp_out_proj)
        module = self.module(path)  # a bridge's LinearBridge is not an nn.Linear: read the one inside
        layout = "out_in" if isinstance(module, nn.Linear) else "in_out"  # GPT-2 Conv1D: [in, out]
        return OutWeight(module.weight, layout, getattr(module, "bias", None), f"{path}.weight")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save the model as it is now (edits included) with its tokenizer, loadable by
        `load_model(directory)`; returns the directory."""
        directory = Path(directory)
        self.hf.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    # ---- hooks ------------------------------------------------------------------------------
    def record(self, sites: Sequence[Site | str], **kwargs) -> ContextManager[dict[str, torch.Tensor]]:
        """`hooks.record` on this model; sites may be given by name."""
        return hooks.record(self, [self.site(s) for s in sites], **kwargs)

    def patch(self, patches: Mapping[Site | str, SiteFn], *, native: bool = True) -> ContextManager[None]:
        """`hooks.patch` on this model; sites may be given by name."""
        return hooks.patch(self, {self.site(s): fn for s, fn in patches.items()}, native=native)

    # ---- tokens -----------------------------------------------------------------------------
    def tokenize(self, prompts_: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` `[batch, pos]` on the model's device, right-padded."""
        texts = [prompts_] if isinstance(prompts_, str) else list(prompts_)
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise ValueError(f"prompts must be non-empty strings, got {prompts_!r}")
        return text.padded(self, texts)

    def generate(self, prompts_: Sequence[str], max_new_tokens: int, *, seed: int = 0, **options
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`(left-padded batch, new ids [batch, max_new_tokens])`; see `text.generate` (greedy
        unless `options` say otherwise; the prompts as given, not `query_text`)."""
        return text.generate(self, prompts_, max_new_tokens, seed=seed, **options)

    def target_log_probs(self, prompts_: Sequence[str], targets: Sequence[str], batch_size: int = 32
                         ) -> list[tuple[torch.Tensor, list[int]]]:
        """Teacher-forced log-probability rows `[n_target_tokens, vocab]` and ids per pair; see
        `text.target_log_probs` (the prompts as given, not `query_text`)."""
        return text.target_log_probs(self, prompts_, targets, batch_size)

    def tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens as readable strings (one per position)."""
        ids = self.tokenizer(prompt)["input_ids"]
        return [self.tokenizer.decode([i]) for i in ids]

    def subject_span(self, prompt: str, subject: str, occurrence: int = -1) -> tuple[int, int]:
        """Token span `[start, end)` of `subject` in `prompt`; see `prompts.subject_span`."""
        return prompts.subject_span(self.tokenizer, prompt, subject, occurrence)

    def target_ids(self, prompt: str, target: str) -> list[int]:
        """Token ids of `target` continuing `prompt`; see `prompts.target_ids`."""
        return prompts.target_ids(self.tokenizer, prompt, target)

    # ---- predictions ------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_logits(self, prompts_: str | Sequence[str]) -> torch.Tensor:
        """Logits of the next token after each prompt `[batch, vocab]` (float32)."""
        batch = self.tokenize(self.query_text(prompts_))
        with self.native():
            logits = self.hf(**batch).logits
        last = batch["attention_mask"].sum(1) - 1
        return logits[torch.arange(len(last)), last].float()

    def predict(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """Top-k next tokens with their probabilities: `[(token_text, prob), ...]`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probs = self.next_token_logits(prompt)[0].softmax(-1)
        values, ids = probs.topk(k)
        return [(self.tokenizer.decode([i]), float(p)) for p, i in zip(values, ids.tolist())]

    def target_log_prob(self, prompt: str, target: str) -> float:
        """log P(target | prompt), summed over all of the target's tokens (nats), as the model is
        asked (`query_text`)."""
        ((rows, ids),) = self.target_log_probs(self.query_text(prompt), [target])
        return float(rows[torch.arange(len(ids)), torch.tensor(ids)].sum())
