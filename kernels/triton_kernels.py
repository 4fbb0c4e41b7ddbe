"""The Triton kernels behind tracelab.kernels, and their launchers (inputs already checked).

    >>> import torch
    >>> from tracelab.kernels.dispatch import kernels, resolve_backend
    >>> C, X = torch.zeros(8, 8), torch.randn(5, 8)
    >>> if resolve_backend("auto", X) == "triton":        # never import this module directly
    ...     kernels().second_moment_(C, X, None)

Imported only through ``dispatch.kernels()`` at the first Triton call of a process, because
``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates: importing ``tracelab.kernels``
decorates nothing, so a test can still switch the interpreter on after the import.

Triton's interpreter keeps bfloat16 as raw 16-bit patterns and does arithmetic on the patterns
(``tl.dot`` and ``+`` give garbage; triton-lang/triton#11584, "not supported yet"), so when
interpreted, bfloat16 operands are cast to float32 right after loading (``UPCAST``); compiled
kernels use them as loaded, on tensor cores. Interpreted runs also use 16-wide blocks, so that
small test shapes cross block edges.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _second_moment_kernel(x_ptr, mask_ptr, c_ptr, n, d, sxn, sxd, smn, sc0, sc1,
                          HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    # Tile (I, J), I <= J, of C += Xᵀ diag(mask) X; the tile below the diagonal is its transpose.
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    if bi <= bj:
        ri = bi * BLOCK_D + tl.arange(0, BLOCK_D)
        rj = bj * BLOCK_D + tl.arange(0, BLOCK_D)
        ok_i = ri < d
        ok_j = rj < d
        acc = tl.zeros((BLOCK_D, BLOCK_D), tl.float32)
        for start in range(0, n, BLOCK_N):
            r = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            keep = r < n
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + r * smn, mask=keep, other=0) != 0)
            rows = x_ptr + r[:, None] * sxn
            # a, b: [BLOCK_N, BLOCK_D], the columns of tiles I and J
            a = tl.load(rows + ri[None, :] * sxd, mask=keep[:, None] & ok_i[None, :], other=0.0)
            b = tl.load(rows + rj[None, :] * sxd, mask=keep[:, None] & ok_j[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc += tl.dot(tl.trans(a), b, input_precision=PRECISION)  # [BLOCK_D, BLOCK_D], fp32
        if bi == bj:  # keep C exactly symmetric: the diagonal tile mirrors its own upper half
            acc = tl.where(ri[:, None] <= rj[None, :], acc, tl.trans(acc))
        ok = ok_i[:, None] & ok_j[None, :]
        ptrs = c_ptr + ri[:, None] * sc0 + rj[None, :] * sc1
        tl.store(ptrs, tl.load(ptrs, mask=ok) + acc, mask=ok)
        if bi != bj:
            ok_t = ok_j[:, None] & ok_i[None, :]
            ptrs_t = c_ptr + rj[:, None] * sc0 + ri[None, :] * sc1
            tl.store(ptrs_t, tl.load(ptrs_t, mask=ok_t) + tl.trans(acc), mask=ok_t)


@triton.jit
def _restore_kernel(h_ptr, c_ptr, src_ptr, noise_ptr, subj_ptr, noisy_ptr, T, D, n_subj,
                    shb, sht, shd, scs, sct, scd, ssb, sst, snb, snj, snd, sjb, sjj, sfb,
                    HAS_SOURCE: tl.constexpr, HAS_NOISE: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # Block [row b, positions t, features] of hidden: clean[source[b, t], t] where source >= 0,
    # else hidden + noise[b, j] at t == subject[b, j] for noisy rows.
    b = tl.program_id(0).to(tl.int64)
    t0 = tl.program_id(1) * BLOCK_T
    t = t0 + tl.arange(0, BLOCK_T)
    dd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = t < T
    d_ok = dd < D
    h_ptrs = h_ptr + b * shb + t[:, None] * sht + dd[None, :] * shd
    src = tl.full((BLOCK_T,), -1, tl.int64)
    if HAS_SOURCE:
        src = tl.load(src_ptr + b * ssb + t * sst, mask=t_ok, other=-1).to(tl.int64)
        restored = (src >= 0)[:, None] & d_ok[None, :]
        x = tl.load(c_ptr + src[:, None] * scs + t[:, None] * sct + dd[None, :] * scd, mask=restored)
        tl.store(h_ptrs, x, mask=restored)
    if HAS_NOISE:
        if tl.load(noisy_ptr + b * sfb) != 0:
            acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
            hits = tl.zeros((BLOCK_T,), tl.int32)
            for j in range(n_subj):
                pos = tl.load(subj_ptr + b * sjb + j * sjj)
                if (pos >= t0) & (pos < t0 + BLOCK_T):  # padding (-1) and other blocks skip
                    hit = (t == pos) & t_ok & (src < 0)
                    z = tl.load(noise_ptr + b * snb + j * snj + dd * snd, mask=d_ok, other=0.0)
                    acc += tl.where(hit[:, None], z.to(tl.float32)[None, :], 0.0)
                    hits += hit.to(tl.int32)
            noised = (hits > 0)[:, None] & d_ok[None, :]
            x = tl.load(h_ptrs, mask=noised, other=0.0).to(tl.float32)
            tl.store(h_ptrs, (x + acc).to(h_ptr.dtype.element_ty), mask=noised)


@triton.jit
def _online_softmax_step(q, kT, v, s_ok, m, l, acc, qk_scale, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # One key block of flash attention in base 2: s = q·kᵀ·scale·log2(e), m = running max,
    # l = Σ 2^(s - m), acc = Σ 2^(s - m) v.
    if UPCAST:
        kT = kT.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
    s = tl.where(s_ok, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l, acc


@triton.jit
def _prefix_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, R, Tq, G, H, P, Dh, qk_scale,
                             sqb, sqh, sqt, sqd, skh, skp, skd, svh, svp, svd,
                             UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Queries of every row b and every q head of kv head g, flattened r = (b·G + h_in_group)·Tq + i,
    # against the shared prefix: each prefix K/V block is read once per BLOCK_M such queries.
    g = tl.program_id(0).to(tl.int64)
    r = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    r_ok = r < R
    i = r % Tq
    b = (r // Tq) // G
    h = g * G + (r // Tq) % G
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < Dh
    q = tl.load(q_ptr + b[:, None] * sqb + h[:, None] * sqh + i[:, None] * sqt + dd[None, :] * sqd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, P, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < P
        kT = tl.load(k_ptr + g * skh + n[None, :] * skp + dd[:, None] * skd,
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_D, BLOCK_N]
        v = tl.load(v_ptr + g * svh + n[:, None] * svp + dd[None, :] * svd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        m, l, acc = _online_softmax_step(q, kT, v, n_ok[None, :], m, l, acc, qk_scale, UPCAST, PRECISION)
    row = (b * H + h) * Tq + i  # into the contiguous fp32 partials [B, H, Tq(, Dh)]
    tl.store(o_ptr + row[:, None] * Dh + dd[None, :], acc / l[:, None], mask=r_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + row, m + tl.log2(l), mask=r_ok)


@triton.jit
def _suffix_attention_kernel(q_ptr, k_ptr, v_ptr, po_ptr, plse_ptr, o_ptr, Tq, H, G, Dh, qk_scale,
                             sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
                             sob, soh, sot, sod,
                             HAS_PREFIX: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Row b, head h, a block of queries i: causal attention over the row's own suffix keys j <= i,
    # started from the prefix partials (m = lse, l = 1, acc = o_prefix) — the log-sum-exp merge.
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    g = h // G
    i = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    i_ok = i < Tq
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < Dh
    ok = i_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sqb + h * sqh + i[:, None] * sqt + dd[None, :] * sqd, mask=ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if HAS_PREFIX:
        m = tl.load(plse_ptr + bh * Tq + i, mask=i_ok, other=0.0)
        l = tl.full((BLOCK_M,), 1.0, tl.float32)
        acc = tl.load(po_ptr + (bh * Tq + i[:, None]) * Dh + dd[None, :], mask=ok, other=0.0)
    else:
        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    hi = tl.minimum((tl.program_id(1) + 1) * BLOCK_M, Tq)
    for start in range(0, hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < Tq
        kT = tl.load(k_ptr + b * skb + g * skh + j[None, :] * skt + dd[:, None] * skd,
                     mask=d_ok[:, None] & j_ok[None, :], other=0.0)
        v = tl.load(v_ptr + b * svb + g * svh + j[:, None] * svt + dd[None, :] * svd,
                    mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        s_ok = (j[None, :] <= i[:, None]) & j_ok[None, :]
        m, l, acc = _online_softmax_step(q, kT, v, s_ok, m, l, acc, qk_scale, UPCAST, PRECISION)
    out = (acc / l[:, None]).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + b * sob + h * soh + i[:, None] * sot + dd[None, :] * sod, out, mask=ok)


INTERPRETED = type(_second_moment_kernel).__name__ == "InterpretedFunction"
_SMALL = INTERPRETED  # interpreted: 16-wide blocks so that small test shapes span several blocks


def _upcast(t: torch.Tensor) -> bool:
    return INTERPRETED and t.dtype == torch.bfloat16


def _precision(t: torch.Tensor) -> str:
    # float32 operands: exact products ("ieee"), not TF32; 16-bit operands ignore the setting
    return "ieee" if t.dtype == torch.float32 or _upcast(t) else "tf32"


def _on(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def second_moment_(C: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None) -> None:
    """C [d, d] fp32 += Xᵀ diag(mask) X for X [n, d]; mask [n] bool or None."""
    n, d = X.shape
    block_d, block_n = (16, 16) if _SMALL else (64, 32)
    m = mask.view(torch.uint8) if mask is not None else X  # X: a placeholder, never read
    grid = (triton.cdiv(d, block_d), triton.cdiv(d, block_d))
    with _on(X):
        _second_moment_kernel[grid](X, m, C, n, d, X.stride(0), X.stride(1), m.stride(0), C.stride(0),
                                    C.stride(1), HAS_MASK=mask is not None, UPCAST=_upcast(X),
                                    PRECISION=_precision(X), BLOCK_D=block_d, BLOCK_N=block_n)


def restore_(hidden: torch.Tensor, clean: torch.Tensor, source: torch.Tensor | None,
             noise: torch.Tensor | None, subject: torch.Tensor | None, noisy: torch.Tensor | None) -> None:
    """hidden [B, T, D] patched in place; clean [S, T, D]; source [B, T]; noise [B, n, D];
    subject [B, n]; noisy [B] bool (broadcast dimensions may have stride 0)."""
    B, T, D = hidden.shape
    block_t, block_d = (16, 16) if _SMALL else (4, min(1024, triton.next_power_of_2(D)))
    src = source if source is not None else hidden  # placeholders, never read
    z = noise if noise is not None else hidden
    subj = subject if subject is not None else hidden.new_zeros(1, 1, dtype=torch.int64)
    flag = noisy.view(torch.uint8) if noisy is not None else hidden
    grid = (B, triton.cdiv(T, block_t), triton.cdiv(D, block_d))
    with _on(hidden):
        _restore_kernel[grid](hidden, clean, src, z, subj, flag, T, D, subj.shape[1],
                              *hidden.stride(), *clean.stride(), src.stride(0), src.stride(1),
                              *z.stride(), subj.stride(0), subj.stride(1), flag.stride(0),
                              HAS_SOURCE=source is not None, HAS_NOISE=noise is not None,
                              BLOCK_T=block_t, BLOCK_D=block_d)


def shared_prefix_attention(q: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                            k_suffix: torch.Tensor, v_suffix: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, Tq, Dh]; k/v_prefix [Hkv, P, Dh]; k/v_suffix [B, Hkv, Tq, Dh] -> [B, H, Tq, Dh]."""
    B, H, Tq, Dh = q.shape
    Hkv, P, _ = k_prefix.shape
    G = H // Hkv
    block_m, block_n = (16, 16) if _SMALL else (64, 64)
    block_d = max(16, triton.next_power_of_2(Dh))
    qk_scale = scale * 1.4426950408889634  # log2(e): the kernels use exp2
    out = torch.empty_like(q)
    with _on(q):
        if P > 0:
            po = torch.empty(B, H, Tq, Dh, device=q.device, dtype=torch.float32)
            plse = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)
            R = B * G * Tq
            _prefix_attention_kernel[(Hkv, triton.cdiv(R, block_m))](
                q, k_prefix, v_prefix, po, plse, R, Tq, G, H, P, Dh, qk_scale, *q.stride(),
                *k_prefix.stride(), *v_prefix.stride(), UPCAST=_upcast(q), PRECISION=_precision(q),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        else:
            po = plse = out  # placeholders, never read
        _suffix_attention_kernel[(B * H, triton.cdiv(Tq, block_m))](
            q, k_suffix, v_suffix, po, plse, out, Tq, H, G, Dh, qk_scale, *q.stride(),
            *k_suffix.stride(), *v_suffix.stride(), *out.stride(), HAS_PREFIX=P > 0,
            UPCAST=_upcast(q), PRECISION=_precision(q), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return out
