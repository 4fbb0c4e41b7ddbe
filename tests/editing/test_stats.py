"""Key statistics: the second moment itself, padding excluded, cache with provenance, resume."""

from __future__ import annotations

import json

import pytest
import torch

from tracelab.dtypes import fast_bf16
from tracelab.editing import corpus, key_stats
from tracelab.models.tiny import tiny_model

TEXTS = ["The Eiffel Tower is located in the city of Paris.", "Toyota is headquartered in Japan.",
         "Mount Fuji is the highest mountain in Japan. The Colosseum is in Rome.", "Apple was founded by Steve Jobs."]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TEXTS * 3))
    return path


def test_second_moment_excludes_padding(text_file):
    model = tiny_model("gpt2")
    s = key_stats(model, 2, corpus=str(text_file), tokens=10_000, batch_size=5, forward_dtype=None, cache=False,
                  progress=False)
    keys = []
    for text in TEXTS * 3:  # one text at a time: no padding at all
        with model.record([model.mlp_key(2)], stop=True) as cache:
            model.hf(**model.tokenize(text))
        keys.append(cache["blocks.2.mlp_key"][0].double())
    K = torch.cat(keys)
    assert s.count == K.shape[0]
    assert torch.allclose(s.moment.double(), K.T @ K / K.shape[0], atol=1e-5)
    assert s.moment.dtype == torch.float32
    # float64 accumulation is exact given the same keys: one text per batch gives the keys computed
    # above bit for bit (padded batches differ by fp32 rounding, ~4e-7, on some CPUs' kernels)
    s64 = key_stats(model, 2, corpus=str(text_file), tokens=10_000, dtype=torch.float64, batch_size=1,
                    forward_dtype=None, cache=False, progress=False)
    assert s64.moment.dtype == torch.float64 and torch.allclose(s64.moment, K.T @ K / K.shape[0], atol=1e-12)


def test_cache_provenance_and_resume(text_file):
    model = tiny_model("llama")
    kw = dict(corpus=str(text_file), batch_size=2, max_len=64, progress=False)
    part = key_stats(model, [1, 2], tokens=30, **kw)[1]
    full = key_stats(model, [1, 2], tokens=10_000, **kw)[1]  # resumes from the partial sums
    fresh = key_stats(model, 1, tokens=10_000, cache=False, **kw)
    assert part.count < full.count == fresh.count
    assert torch.allclose(full.moment, fresh.moment, atol=1e-6)
    # a cached result is read back; its provenance names the model, weights, corpus and dtype
    again = key_stats(model, 1, tokens=10_000, **kw)
    assert torch.equal(again.moment, full.moment)
    assert {"model", "weights", "corpus", "revision", "dtype", "tokens"} <= set(again.provenance)
    # changed weights below the layer: the cache no longer matches, so it is recomputed
    with torch.no_grad():
        model.layer(0).mlp.down_proj.weight.mul_(1.5)
    with pytest.warns(UserWarning, match="recomputing"):
        changed = key_stats(model, 1, tokens=10_000, **kw)
    assert changed.provenance["weights"] != full.provenance["weights"]
    assert not torch.allclose(changed.moment, full.moment)
    with pytest.raises(ValueError, match="computed on"):
        full.check(model)


def test_a_damaged_cache_is_reported_with_its_path_and_recomputed(text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    kw = dict(corpus=str(text_file), batch_size=2, max_len=64, tokens=10_000, progress=False)
    good = key_stats(model, 1, **kw)
    (cached,) = (tmp_path / "cache").rglob("layer01-*.safetensors")
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match=rf"{cached.stem}.safetensors cannot be read.*recomputing"):
        again = key_stats(model, 1, **kw)
    assert torch.allclose(again.moment, good.moment, atol=1e-6)
    assert torch.equal(key_stats(model, 1, **kw).moment, again.moment)  # rewritten, read back


def test_forward_dtype_is_recorded_and_caches_are_not_shared(text_file):
    """A bf16 forward (autocast; sums in float32) is close to the float32 one, and a cache made one
    way is never read for the other: they live under different names with different provenance."""
    model = tiny_model("llama")
    kw = dict(corpus=str(text_file), batch_size=2, max_len=64, tokens=10_000, progress=False)
    bf16 = key_stats(model, 1, forward_dtype=torch.bfloat16, **kw)
    fp32 = key_stats(model, 1, forward_dtype=None, **kw)
    assert bf16.provenance["forward"] == "torch.bfloat16" and fp32.provenance["forward"] == "torch.float32"
    assert bf16.moment.dtype == fp32.moment.dtype == torch.float32
    assert not torch.equal(bf16.moment, fp32.moment)
    assert float((bf16.moment - fp32.moment).norm() / fp32.moment.norm()) < 0.05
    auto = bf16 if fast_bf16(model.device) else fp32  # "auto": bf16 for float32 where native, its own cache
    assert torch.equal(key_stats(model, 1, **kw).moment, auto.moment)
    assert torch.equal(key_stats(model, 1, forward_dtype=torch.float32, **kw).moment, fp32.moment)  # = the model's dtype


def test_stats_bad_input(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        key_stats(model, 1, dtype=torch.float16, progress=False)
    with pytest.raises(ValueError, match="positive"):
        key_stats(model, 1, tokens=0, progress=False)
    with pytest.raises(ValueError, match="forward_dtype must be"):
        key_stats(model, 1, forward_dtype=torch.float64, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        key_stats(model, 9, progress=False)
    with pytest.raises(FileNotFoundError):
        key_stats(model, 1, corpus=str(tmp_path / "missing.txt"), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="'text'"):
        key_stats(model, 1, corpus=str(bad), progress=False)


def test_wordnet_corpus_is_real_english():
    c = corpus("wordnet")
    first = next(iter(c.texts()))
    assert c.id == "wordnet-3.0-glosses-shuffled" and len(c.revision) == 16
    assert len(first.split()) > 20 and first[0].isupper()
    assert first == next(iter(c.texts()))  # the same order every time


def test_wordnet_corpus_reaches_named_entities_early():
    """The files are sorted by topic; shuffled, the first ~100k tokens already hold people and places."""
    head = " ".join(t for t, _ in zip(corpus("wordnet").texts(), range(500)))  # ~4,000 glosses
    assert sum(city in head for city in (" city ", "capital of", " port ", "French", "American")) >= 4


def test_the_unedited_weights_hash_looks_through_edits_without_taking_them_out(monkeypatch):
    import tracelab as tl
    from tracelab.editing import FTLParams, journal
    from tracelab.editing.journal import Journal
    from tracelab.editing.toolkit.stats import weights_hash, weights_hashes

    model = tiny_model("llama")
    base = [weights_hash(model, l) for l in range(3)]
    edits = [tl.edit(model, subject=s, prompt="{} is in", target=t, method="ft-l", layer=1,
                     params=FTLParams(steps=2), progress=False) for s, t in [("Paris", "Rome"), ("Oslo", "Lima")]]
    assert weights_hash(model, 0) == base[0] and weights_hash(model, 1) != _plain_hash(model, 1)

    def no_suspension(self):
        raise AssertionError("the hash took the journal's edits out")
    monkeypatch.setattr(Journal, "suspended", no_suspension)
    assert [weights_hash(model, l) for l in range(3)] == base  # cost independent of the edits in the journal
    assert weights_hashes(model, [2, 0, 1]) == dict(enumerate(base))  # one pass for several layers
    monkeypatch.undo()
    for e in reversed(edits):
        e.undo()
    assert len(journal(model)) == 0 and [weights_hash(model, l) for l in range(3)] == base


def _plain_hash(model, layer):
    """The hash of the weights as they are now (edits included)."""
    from tracelab.editing.toolkit.stats import _digests, _hashed_parameters
    from tracelab.io import tensor_hash

    embed, blocks = _hashed_parameters(model, layer)
    return _digests(embed, blocks, [layer], tensor_hash)[layer]
