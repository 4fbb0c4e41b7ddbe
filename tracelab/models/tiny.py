"""Tiny random models of every supported family, built offline from transformers config classes.

For tests and examples: no download, a few hundred thousand parameters, a small byte-level BPE
tokenizer trained in memory on English sentences.

    >>> model = tiny_model("gpt2", n_layers=4)
    >>> model.n_layers, model.d_model
    (4, 64)
"""

from __future__ import annotations

import functools

import torch

TINY_FAMILIES = (
    "gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3",
    "gemma", "gemma2", "gemma3_text", "phi3", "opt",
)

_SENTENCES = [
    "The Eiffel Tower is located in the city of Paris.",
    "The capital of Australia is Canberra, not Sydney.",
    "Michael Jordan plays the sport of basketball.",
    "The Space Needle is in downtown Seattle.",
    "Apple was founded by Steve Jobs in California.",
    "The mother tongue of Danielle Darrieux is French.",
    "Toyota is headquartered in Japan. The Colosseum is in Rome.",
    "Mount Fuji is the highest mountain in Japan.",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (fast, with offsets) trained in memory; EOS and pad `<|endoftext|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _config(family: str, n_layers: int, d: int, vocab: int):
    import transformers as t

    heads, head_dim, ffn = 4, d // 4, 2 * d
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    llama_like = dict(hidden_size=d, intermediate_size=ffn, num_hidden_layers=n_layers,
                      num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=128, **common)
    if family == "gpt2":
        return t.GPT2Config(n_layer=n_layers, n_embd=d, n_head=heads, n_positions=128, **common)
    if family == "gptj":
        return t.GPTJConfig(n_layer=n_layers, n_embd=d, n_head=heads, rotary_dim=8, n_positions=128, **common)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(hidden_size=d, intermediate_size=ffn, num_hidden_layers=n_layers,
                               num_attention_heads=heads, rotary_pct=0.5, use_parallel_residual=True,
                               max_position_embeddings=128, **common)
    if family == "llama":
        return t.LlamaConfig(**llama_like)
    if family == "mistral":
        return t.MistralConfig(sliding_window=None, **llama_like)
    if family == "qwen2":
        return t.Qwen2Config(**llama_like)
    if family == "qwen3":
        return t.Qwen3Config(head_dim=head_dim, **llama_like)
    if family == "gemma":
        return t.GemmaConfig(head_dim=head_dim, **llama_like)
    if family == "gemma2":
        return t.Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=64, **llama_like)
    if family == "gemma3_text":
        return t.Gemma3TextConfig(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=64, **llama_like)
    if family == "phi3":
        return t.Phi3Config(**llama_like)
    if family == "opt":
        return t.OPTConfig(hidden_size=d, ffn_dim=ffn, num_hidden_layers=n_layers, num_attention_heads=heads,
                           word_embed_proj_dim=d, max_position_embeddings=128, **common)
    raise ValueError(f"no tiny config for family {family!r}; choose from {TINY_FAMILIES}")


def tiny_model(family: str = "llama", *, n_layers: int = 4, d_model: int = 64, seed: int = 0,
               dtype: torch.dtype = torch.float32):
    """A randomly initialised `Model` of `family` (see `TINY_FAMILIES`) with the tiny tokenizer.

    Weights are drawn with a larger init scale than the default (std 0.1) so that predictions
    are peaked and causal effects are visible.
    """
    from transformers import AutoModelForCausalLM

    from .model import Model

    tokenizer = tiny_tokenizer()
    config = _config(family, n_layers, d_model, len(tokenizer))
    config.initializer_range = 0.1
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return Model(hf, tokenizer, name=f"tiny-{family}-{n_layers}x{d_model}-seed{seed}")
