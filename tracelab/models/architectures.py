"""Where things are in each decoder family: one `Architecture` record per family.

Nothing outside `tracelab.models` names a module path; everything asks the record.

    >>> arch = architecture_for("llama")
    >>> arch.layers, arch.mlp_out_proj
    ('model.layers', 'mlp.down_proj')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """Module paths of one decoder family (paths of a layer's parts are relative to the layer).

    - `layers`: the `ModuleList` of decoder blocks; a block's output is `resid(l)`.
    - `attn`: the attention module; its output (first element if a tuple) is `attn_out(l)`.
    - `mlp`: the module whose output is `mlp_out(l)` (the whole MLP, or OPT's `fc2`).
    - `mlp_out_proj`: the MLP's output projection; its input is `mlp_key(l)` (ROME's k) and its
      weight is what editors change.
    - `embed`: the token embedding; its output is the `embed` site (noise goes here).
    - `final_norm`: the last norm (the LM head is `hf.get_output_embeddings()` in every family).
    - `parallel`: attention and MLP read the same block input (GPT-J, NeoX parallel residual).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    attn: str
    mlp: str
    mlp_out_proj: str
    embed: str
    final_norm: str
    parallel: bool = False


_LLAMA_LIKE = dict(
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    mlp_out_proj="mlp.down_proj",
    embed="model.embed_tokens",
    final_norm="model.norm",
)

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        family="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        mlp_out_proj="mlp.c_proj",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
    ),
    Architecture(
        family="gptj",
        model_types=("gptj",),
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        mlp_out_proj="mlp.fc_out",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        parallel=True,
    ),
    Architecture(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        mlp_out_proj="mlp.dense_4h_to_h",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        parallel=True,  # when config.use_parallel_residual (Pythia); see Model.parallel
    ),
    Architecture(family="llama", model_types=("llama", "mistral"), **_LLAMA_LIKE),
    Architecture(family="qwen", model_types=("qwen2", "qwen3"), **_LLAMA_LIKE),
    Architecture(family="gemma", model_types=("gemma", "gemma2", "gemma3_text"), **_LLAMA_LIKE),
    Architecture(family="phi3", model_types=("phi3",), **_LLAMA_LIKE),
    Architecture(
        family="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        attn="self_attn",
        mlp="fc2",
        mlp_out_proj="fc2",
        embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
    ),
)

_BY_MODEL_TYPE = {t: arch for arch in ARCHITECTURES for t in arch.model_types}


def supported_model_types() -> list[str]:
    """The `config.model_type` values tracelab knows, sorted."""
    return sorted(_BY_MODEL_TYPE)


def architecture_for(model_type: str) -> Architecture:
    """The `Architecture` for a transformers `config.model_type`; ValueError listing the known ones."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {model_type!r}: tracelab knows "
            f"{', '.join(supported_model_types())}. Add an Architecture record for it in "
            "tracelab/models/architectures.py (module paths of layers, attention, MLP, "
            "MLP output projection, embedding, final norm)."
        ) from None
