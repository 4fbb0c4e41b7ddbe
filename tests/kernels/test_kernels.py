"""tracelab.kernels: Triton kernels (run in Triton's interpreter on the CPU) and torch fallbacks.

Both backends are compared with float64 references on fresh random inputs every run (hypothesis
draws the shapes and the seed; a failure prints them), odd shapes that cross the interpreter's
16-wide blocks, every supported dtype, and strided views. Outputs are poisoned so that an element a
kernel forgets to write fails: buffers the functions allocate come NaN-filled, restored states
start as NaN, and second moments start from random (non-symmetric) values that each need their sum.

TRITON_INTERPRET is set at import of this module. That is early enough even when another test
module imported tracelab.kernels first: the package builds (decorates) its Triton kernels only at
the first Triton call. Tolerances, against float64: float32 results and float32 accumulation of
16-bit inputs within a few 1e-6 of the scale of the sums; results stored in float16/bfloat16
within one unit in the last place (eps · |value|, 2^-10 and 2^-7) plus, for attention, the
rounding of softmax weights to the 16-bit dtype before the weighted sum on a GPU.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before the first Triton kernel is built (see module docstring)

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tracelab.kernels import (  # noqa: E402
    SecondMoment, accumulate_second_moment, resolve_backend, restore_, shared_prefix_attention,
    triton_problem)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["triton", "torch"]
# Fresh inputs on every run, in CI too (where hypothesis would otherwise derandomize). No shrinking:
# an interpreted kernel call takes up to a second and shrinking runs hundreds of them; a failure is
# reported as drawn, with the seed that reproduces it.
few = settings(max_examples=8, deadline=None, derandomize=False, print_blob=True,
               phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def backend(request, monkeypatch):
    """The backend of a parametrized test; skips the Triton runs where Triton cannot run here."""
    monkeypatch.delenv("TRACELAB_FORCE_TRITON", raising=False)
    name = request.param
    if name == "triton" and triton_problem("cpu") is not None:
        pytest.skip(f"the Triton kernels cannot run in this process: {triton_problem('cpu')}")
    return name


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled floating tensors while a test runs."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


def randn(g: torch.Generator, *shape: int, dtype=torch.float32, strided: bool = False) -> torch.Tensor:
    """Standard normal values in ``dtype``; ``strided`` returns a non-contiguous view of them."""
    if not strided:
        return torch.randn(*shape, generator=g).to(dtype)
    big = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=g).to(dtype)
    return big[..., 1::2]  # last-dimension stride 2


def within_ulp(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Assert |out - ref| <= one unit in the last place of out's dtype at ref (ref in float64)."""
    eps, tiny = torch.finfo(out.dtype).eps, torch.finfo(out.dtype).tiny
    err = (out.double() - ref).abs()
    bad = err > eps * ref.abs() + tiny
    assert not bad.any(), f"{int(bad.sum())} elements off by more than 1 ulp; worst {err.max().item():.3g}"


# ---------------------------------------------------------------- second moments


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@few
@given(n=st.integers(0, 50), d=st.integers(1, 70), masked=st.booleans(), strided=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_second_moment_matches_float64(backend, dtype, n, d, masked, strided, seed):
    g = torch.Generator().manual_seed(seed)
    X = randn(g, n, d, dtype=dtype, strided=strided)
    mask = torch.rand(n, generator=g) < 0.6 if masked else None
    C0 = torch.randn(d, d, generator=g)  # not symmetric: every element must get its own sum once
    C = C0.clone()
    count = accumulate_second_moment(C, X, mask, backend=backend)
    rows = X.double() if mask is None else X.double()[mask]
    assert count == rows.shape[0]
    ref = C0.double() + rows.T @ rows
    scale = C0.double().abs() + rows.abs().T @ rows.abs()  # what the rounding errors are relative to
    err = (C.double() - ref).abs()
    assert (err <= 4e-6 * scale).all(), f"worst relative error {(err / scale).max().item():.3g}"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_second_moment_keeps_c_exactly_symmetric(backend):
    A = torch.randn(37, 37)
    C = A + A.T
    for _ in range(2):
        accumulate_second_moment(C, torch.randn(23, 37).to(torch.bfloat16), backend=backend)
    assert torch.equal(C, C.T)


def test_second_moment_float64_sums_take_the_torch_path(monkeypatch):
    monkeypatch.setenv("TRACELAB_FORCE_TRITON", "1")
    X = torch.randn(9, 5)
    C = torch.zeros(5, 5, dtype=torch.float64)
    assert accumulate_second_moment(C, X) == 9
    torch.testing.assert_close(C, X.double().T @ X.double(), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="float64 C"):
        accumulate_second_moment(C, X, backend="triton")


def test_second_moment_accumulator_counts_rows_and_averages():
    X1, X2 = torch.randn(10, 6), torch.randn(7, 6)
    mask = torch.tensor([True, False, True, True, False, False, True])
    sm = SecondMoment(6, backend="torch").add(X1).add(X2, mask)
    assert sm.count == 14
    rows = torch.cat([X1, X2[mask]]).double()
    torch.testing.assert_close(sm.finalize().double(), rows.T @ rows / 14, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least one row"):
        SecondMoment(3).add(torch.randn(4, 3), torch.zeros(4, dtype=torch.bool)).finalize()


# ---------------------------------------------------------------- batched restore


def restore_reference(hidden, clean, source, noise, subject, noisy):
    """The definition, in float64, one position at a time."""
    ref = hidden.double().clone()
    B, T, _ = hidden.shape
    if noise is not None:
        for b in range(B):
            for j in range(subject.shape[-1]):
                t = int(subject[b, j] if subject.dim() == 2 else subject[j])
                if t >= 0 and (noisy is None or noisy[b]):
                    ref[b, t] += (noise[b, j] if noise.dim() == 3 else noise[j]).double()
    if source is not None:
        clean3 = clean if clean.dim() == 3 else clean[None]
        for b in range(B):
            for t in range(T):
                if source[b, t] >= 0:
                    ref[b, t] = clean3[source[b, t], t].double()
    return ref


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@few
@given(B=st.integers(1, 5), T=st.integers(1, 40), D=st.integers(1, 70), S=st.integers(0, 3),
       n=st.integers(0, 4), per_row=st.booleans(), noise_dtype=st.sampled_from(DTYPES),
       strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_restore_matches_reference(backend, dtype, B, T, D, S, n, per_row, noise_dtype, strided, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = randn(g, B, T, D, dtype=dtype, strided=strided)
    clean = randn(g, max(S, 1), T, D, dtype=dtype, strided=strided)
    clean = clean[0] if S == 0 else clean  # S == 0: the [T, D] form
    source = None
    if S != 1:  # S == 1 runs without a source map (noise only)
        source = torch.randint(0, max(S, 1), (B, T), generator=g)
        source[torch.rand(B, T, generator=g) < 0.6] = -1
    noise = subject = noisy = None
    if n and T >= n:
        rows = B if per_row else 1
        subject = torch.stack([torch.randperm(T, generator=g)[:n] for _ in range(rows)])
        subject[torch.rand(rows, n, generator=g) < 0.2] = -1  # padding
        subject = subject if per_row else subject[0]
        noise = randn(g, *((B, n, D) if per_row else (n, D)), dtype=noise_dtype)
        noisy = torch.rand(B, generator=g) < 0.7 if per_row else None
    if source is not None:  # restored elements must be written, never read: poison them
        hidden[source >= 0] = float("nan")
    before = hidden.clone()
    ref = restore_reference(hidden, clean, source, noise, subject, noisy)
    out = restore_(hidden, clean, source, noise=noise, subject=subject, noisy=noisy, backend=backend)
    assert out is hidden
    restored = source >= 0 if source is not None else torch.zeros(B, T, dtype=torch.bool)
    assert torch.equal(hidden[restored], ref[restored].to(dtype))  # copies are exact
    changed = (ref != before.double()).any(-1) | restored
    assert torch.equal(hidden[~changed], before[~changed])  # everything else untouched, bit for bit
    within_ulp(hidden[changed & ~restored], ref[changed & ~restored])


def test_restore_restored_position_wins_over_noise():
    hidden, clean = torch.zeros(1, 3, 2), torch.ones(3, 2)
    source = torch.tensor([[-1, 0, -1]])
    out = restore_(hidden, clean, source, noise=torch.full((2, 2), 5.0), subject=torch.tensor([1, 2]),
                   backend="torch")
    assert out[0, :, 0].tolist() == [0.0, 1.0, 5.0]


# ---------------------------------------------------------------- shared-prefix attention


def attention_reference(q, kp, vp, ks, vs, scale):
    """Causal attention over cat([prefix repeated per row, suffix]), in float64."""
    B, H, Tq, Dh = q.shape
    Hkv, P, _ = kp.shape
    k = torch.cat([kp.double().expand(B, -1, -1, -1), ks.double()], 2).repeat_interleave(H // Hkv, 1)
    v = torch.cat([vp.double().expand(B, -1, -1, -1), vs.double()], 2).repeat_interleave(H // Hkv, 1)
    allowed = torch.ones(Tq, P + Tq, dtype=torch.bool)
    allowed[:, P:] = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    s = (q.double() @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


ATTENTION_TOL = {torch.float32: (2e-6, 2e-6), torch.float16: (2**-10, 1e-3), torch.bfloat16: (2**-7, 4e-3)}


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@few
@given(B=st.integers(1, 3), Hkv=st.integers(1, 2), G=st.integers(1, 2), Tq=st.integers(1, 20),
       P=st.integers(0, 40), Dh=st.integers(1, 40), scale=st.none() | st.floats(0.05, 1.0),
       strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_attention_matches_float64(backend, dtype, B, Hkv, G, Tq, P, Dh, scale, strided, seed):
    g = torch.Generator().manual_seed(seed)
    H = Hkv * G
    # strided: q as the [B, T, H, Dh] -> [B, H, T, Dh] view that models produce
    q = randn(g, B, Tq, H, Dh, dtype=dtype).transpose(1, 2) if strided else randn(g, B, H, Tq, Dh, dtype=dtype)
    kp, vp = (randn(g, Hkv, P, Dh, dtype=dtype, strided=strided) for _ in range(2))
    ks, vs = (randn(g, B, Hkv, Tq, Dh, dtype=dtype, strided=strided) for _ in range(2))
    out = shared_prefix_attention(q, kp, vp, ks, vs, scale=scale, backend=backend)
    ref = attention_reference(q, kp, vp, ks, vs, Dh**-0.5 if scale is None else scale)
    assert out.shape == q.shape and out.dtype == dtype
    rtol, atol = ATTENTION_TOL[dtype]
    vmax = max(vp.abs().max().item() if P else 0.0, vs.abs().max().item())
    err = (out.double() - ref).abs()
    assert (err <= rtol * ref.abs() + atol * vmax).all(), f"worst error {err.max().item():.3g}"


def test_attention_matches_sdpa_on_the_concatenated_cache():
    B, H, Tq, P, Dh = 2, 3, 5, 4, 8
    q, ks, vs = torch.randn(3, B, H, Tq, Dh)
    kp, vp = torch.randn(2, H, P, Dh)
    k = torch.cat([kp.expand(B, -1, -1, -1), ks], 2)
    v = torch.cat([vp.expand(B, -1, -1, -1), vs], 2)
    mask = torch.ones(Tq, P + Tq, dtype=torch.bool).tril(diagonal=P)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(shared_prefix_attention(q, kp, vp, ks, vs, backend="torch"), sdpa,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- dispatch


def test_auto_uses_torch_on_cpu_and_follows_the_switch(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.delenv("TRACELAB_FORCE_TRITON", raising=False)
    assert resolve_backend("auto", x) == "torch"
    if triton_problem("cpu") is None:  # kernels interpreted: "auto" never picks them, even for CUDA
        assert resolve_backend("auto", SimpleNamespace(device=torch.device("cuda"))) == "torch"
    monkeypatch.setenv("TRACELAB_FORCE_TRITON", "0")
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend("auto", SimpleNamespace(device=torch.device("cuda"))) == "torch"
    monkeypatch.setenv("TRACELAB_FORCE_TRITON", "1")
    if triton_problem("cpu") is None:
        assert resolve_backend("auto", x) == "triton"
    assert resolve_backend("torch", x) == "torch"
    monkeypatch.setenv("TRACELAB_FORCE_TRITON", "yes")
    with pytest.raises(ValueError, match="TRACELAB_FORCE_TRITON must be 1.*got 'yes'"):
        resolve_backend("auto", x)
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton'; got 'gpu'"):
        accumulate_second_moment(torch.zeros(2, 2), torch.zeros(3, 2), backend="gpu")


def test_without_the_interpreter_triton_is_refused_cleanly_and_auto_falls_back():
    """A fresh process without TRITON_INTERPRET: importing builds nothing, CPU tensors and a GPU-less
    "cuda" device fall back to torch silently, and forcing Triton raises a RuntimeError saying how
    to fix it."""
    script = textwrap.dedent("""
        import os, sys, torch
        from types import SimpleNamespace
        import tracelab.kernels as K
        C = torch.zeros(3, 3)
        assert K.accumulate_second_moment(C, torch.ones(4, 3)) == 4 and C[0, 0] == 4
        assert "tracelab.kernels.triton_kernels" not in sys.modules, "kernels built eagerly"
        cuda = SimpleNamespace(device=torch.device("cuda"))
        if not torch.cuda.is_available():
            assert K.resolve_backend("auto", cuda) == "torch"
            assert "driver" in K.triton_problem("cuda"), K.triton_problem("cuda")
        os.environ["TRACELAB_FORCE_TRITON"] = "1"
        try:
            K.accumulate_second_moment(C, torch.ones(4, 3))
        except RuntimeError as e:
            print(e)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRACELAB_FORCE_TRITON")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "TRITON_INTERPRET=1" in run.stdout and "TRACELAB_FORCE_TRITON" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr


# ---------------------------------------------------------------- bad inputs


def _bad_calls():
    X, C = torch.randn(5, 3), torch.zeros(3, 3)
    h, clean, src = torch.zeros(2, 4, 3), torch.zeros(4, 3), torch.full((2, 4), -1)
    q, kv = torch.zeros(2, 4, 3, 16), torch.zeros(2, 5, 16)
    ks = torch.zeros(2, 2, 3, 16)
    return [
        (lambda: accumulate_second_moment(C, X.reshape(5, 3, 1)),
         ValueError, r"X must have shape \[n, d\]; got shape \(5, 3, 1\)"),
        (lambda: accumulate_second_moment(C, X.long()),
         TypeError, "X must have dtype float16, bfloat16, float32; got torch.int64"),
        (lambda: accumulate_second_moment(C, X.numpy()), TypeError, "X must be a torch.Tensor.*got ndarray"),
        (lambda: accumulate_second_moment(torch.zeros(4, 4), X),
         ValueError, r"C must have shape .* = \(3, 3\); got \(4, 4\)"),
        (lambda: accumulate_second_moment(C.half(), X),
         TypeError, "C must have dtype float32, float64; got torch.float16"),
        (lambda: accumulate_second_moment(C, X, torch.ones(4, dtype=torch.bool)),
         ValueError, r"mask must have shape \[n\].*\(5,\); got \(4,\)"),
        (lambda: accumulate_second_moment(C, X, torch.ones(5)),
         TypeError, "mask must have dtype bool; got torch.float32"),
        (lambda: accumulate_second_moment(C, X.to("meta")),
         ValueError, "X is on meta but the other inputs are on cpu"),
        (lambda: restore_(h[0], clean, src),
         ValueError, r"hidden must have shape \[B, T, D\]; got shape \(4, 3\)"),
        (lambda: restore_(h, clean.half(), src),
         TypeError, "clean must have dtype float32; got torch.float16"),
        (lambda: restore_(h, torch.zeros(5, 3), src),
         ValueError, r"clean must have shape .*\(4, 3\); got \(5, 3\)"),
        (lambda: restore_(h, clean, src[:, :3]),
         ValueError, r"source must have shape \[B, T\].*\(2, 4\); got \(2, 3\)"),
        (lambda: restore_(h, clean, src.float()),
         TypeError, "source must have dtype int32, int64; got torch.float32"),
        (lambda: restore_(h, clean, src + 2),
         ValueError, r"source must hold -1 or an index in \[0, 1\).*from 1 to 1"),
        (lambda: restore_(h, clean, None, noise=torch.zeros(2, 3)),
         ValueError, "noise and subject come together"),
        (lambda: restore_(h, clean, None, noise=torch.zeros(2, 3), subject=torch.tensor([1, 4])),
         ValueError, r"subject must hold -1 or an index in \[0, 4\)"),
        (lambda: restore_(h, clean, None, noise=torch.zeros(2, 3), subject=torch.tensor([1, 1])),
         ValueError, "distinct within a row"),
        (lambda: restore_(h, clean, None, noise=torch.zeros(3, 3), subject=torch.tensor([1, 2])),
         ValueError, r"noise must have shape .*\(2, 3\); got \(3, 3\)"),
        (lambda: restore_(h, clean, None, noisy=torch.ones(2, dtype=torch.bool)),
         ValueError, "no noise was given"),
        (lambda: shared_prefix_attention(q[0], kv, kv, ks, ks),
         ValueError, r"q must have shape \[B, H, Tq, Dh\]; got shape \(4, 3, 16\)"),
        (lambda: shared_prefix_attention(q, kv.half(), kv, ks, ks),
         TypeError, "k_prefix must have dtype float32; got torch.float16"),
        (lambda: shared_prefix_attention(q, kv, kv, ks[:, :, :2], ks),
         ValueError, r"k_suffix must have shape .*\(2, 2, 3, 16\); got \(2, 2, 2, 16\)"),
        (lambda: shared_prefix_attention(q, kv[:, :, :8], kv, ks, ks),
         ValueError, r"k_prefix must have shape .*\(2, 5, 16\); got \(2, 5, 8\)"),
        (lambda: shared_prefix_attention(torch.zeros(2, 3, 3, 16), kv, kv, ks, ks),
         ValueError, "Hkv must divide H"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_inputs_say_what_was_given_and_expected(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error, match=message):
        call()
