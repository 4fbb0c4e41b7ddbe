"""The patch step of batched causal tracing: restore clean states and add corruption noise, in place.

    >>> import torch
    >>> from tracelab.kernels import restore_
    >>> hidden, clean = torch.zeros(2, 5, 3), torch.ones(5, 3)       # 2 restored runs, 5 tokens
    >>> source = torch.full((2, 5), -1)
    >>> source[0, 4] = source[1, 2] = 0                              # row 0 gets token 4, row 1 token 2
    >>> out = restore_(hidden, clean, source)
    >>> out[:, :, 0]
    tensor([[0., 0., 0., 0., 1.],
            [0., 0., 1., 0., 0.]])

One Triton kernel does the whole step for a batch of restored runs: each program takes a block of
positions of one row, copies in the clean states its ``source`` map asks for, and adds the noise at
the row's subject positions (the corruption of the embeddings), reading and writing only the
elements that change. The torch path does the same with two advanced-indexing assignments.
"""

from __future__ import annotations

import torch

from .checks import FLOATS, INTEGERS, check_shape, check_tensor
from .dispatch import Backend, kernels, resolve_backend


def restore_(hidden: torch.Tensor, clean: torch.Tensor, source: torch.Tensor | None, *,
             noise: torch.Tensor | None = None, subject: torch.Tensor | None = None,
             noisy: torch.Tensor | None = None, backend: Backend = "auto") -> torch.Tensor:
    """Patch ``hidden`` in place and return it: clean states where ``source`` says, noise elsewhere.

        >>> h = torch.zeros(2, 4, 3)
        >>> _ = restore_(h, torch.ones(4, 3), None, noise=torch.full((2, 3), 0.5),
        ...              subject=torch.tensor([1, 2]), noisy=torch.tensor([True, False]))
        >>> h[:, :, 0]
        tensor([[0.0000, 0.5000, 0.5000, 0.0000],
                [0.0000, 0.0000, 0.0000, 0.0000]])

    Shapes (B rows, T positions, D features, S clean runs, n subject tokens):

    - hidden [B, T, D] float16/bfloat16/float32, the states of the restored runs at one site;
    - clean [S, T, D] or [T, D] (S = 1), same dtype: the clean runs' states at that site. For a
      window of positions t0.. pass the matching slice ``clean[:, t0:]``;
    - source [B, T] int32/int64 or None: ``source[b, t] = s >= 0`` sets ``hidden[b, t] = clean[s, t]``;
      -1 keeps ``hidden[b, t]``. From (row, position, source) triples:
      ``source = torch.full((B, T), -1); source[rows, positions] = sources``;
    - noise [B, n, D] or [n, D] (the same for every row), any float dtype, or None;
    - subject [B, n] or [n] int32/int64: the positions that ``noise[b, j]`` is added at; distinct
      within a row, -1 pads a row with fewer subject tokens;
    - noisy [B] bool or None (every row): which rows get noise.

    A restored position takes the clean state exactly, even at a noisy subject position. The noise
    is added in float32 and rounded once to hidden's dtype. Checking the index ranges reads one
    small tensor back to the host (one sync on a GPU).
    """
    check_tensor("hidden", hidden, ndim=(3,), dtypes=FLOATS, shape="[B, T, D]")
    B, T, D = hidden.shape
    dev = hidden.device
    check_tensor("clean", clean, ndim=(2, 3), dtypes=(hidden.dtype,), shape="[S, T, D] or [T, D]",
                 device=dev)
    clean = clean if clean.dim() == 3 else clean.unsqueeze(0)
    check_shape("clean", clean[0], (T, D), "[S, T, D] with T, D = hidden.shape[1:]")
    if source is not None:
        check_tensor("source", source, ndim=(2,), dtypes=INTEGERS, shape="[B, T]", device=dev)
        check_shape("source", source, (B, T), "[B, T] with B, T = hidden.shape[:2]")
    if (noise is None) != (subject is None):
        raise ValueError(f"noise and subject come together: noise is added at the subject positions; "
                         f"got noise={_desc(noise)}, subject={_desc(subject)}")
    if noise is not None:
        check_tensor("subject", subject, ndim=(1, 2), dtypes=INTEGERS, shape="[B, n] or [n]", device=dev)
        n = subject.shape[-1]
        if subject.dim() == 2:
            check_shape("subject", subject, (B, n), "[B, n] with B = hidden.shape[0]")
        check_tensor("noise", noise, ndim=(2, 3), dtypes=FLOATS, shape="[B, n, D] or [n, D]", device=dev)
        check_shape("noise", noise if noise.dim() == 2 else noise[0], (n, D),
                    "[B, n, D] or [n, D] with n = subject.shape[-1], D = hidden.shape[2]")
        if noise.dim() == 3:
            check_shape("noise", noise, (B, n, D), "[B, n, D] with B = hidden.shape[0]")
        subject, noise = subject.expand(B, n), noise.expand(B, n, D)
        if noisy is None:
            noisy = torch.ones(B, dtype=torch.bool, device=dev)
        check_tensor("noisy", noisy, ndim=(1,), dtypes=(torch.bool,), shape="[B]", device=dev)
        check_shape("noisy", noisy, (B,), "[B] with B = hidden.shape[0]")
    elif noisy is not None:
        raise ValueError("noisy says which rows get noise, but no noise was given; pass noise= and "
                         "subject= too, or drop noisy=")
    _check_ranges(source, clean.shape[0], subject, T)
    if hidden.numel() == 0:
        return hidden
    if resolve_backend(backend, hidden) == "triton":
        kernels().restore_(hidden, clean, source, noise, subject, noisy)
        return hidden
    if noise is not None:  # noise first, so that restoring below overwrites it
        rows, j = (subject >= 0).logical_and(noisy[:, None]).nonzero(as_tuple=True)
        t = subject[rows, j]
        hidden[rows, t] = (hidden[rows, t].float() + noise[rows, j].float()).to(hidden.dtype)
    if source is not None:
        rows, t = (source >= 0).nonzero(as_tuple=True)
        hidden[rows, t] = clean[source[rows, t], t]
    return hidden


def _desc(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"a tensor of shape {tuple(t.shape)}"


def _check_ranges(source: torch.Tensor | None, n_clean: int, subject: torch.Tensor | None, T: int) -> None:
    # source in [-1, S), subject in [-1, T), subject positions distinct within a row: one host sync
    named, values = [], []
    for name, x, bound in (("source", source, n_clean), ("subject", subject, T)):
        if x is not None and x.numel():
            named.append((name, bound))
            values += [v.long() for v in x.aminmax()]
    repeats = subject is not None and subject.shape[1] > 1
    if repeats:
        s = subject.sort(dim=1).values
        values.append(((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any().long())
    if not values:
        return
    got = torch.stack(values).tolist()
    for k, (name, bound) in enumerate(named):
        lo, hi = got[2 * k], got[2 * k + 1]
        if lo < -1 or hi >= bound:
            what = "clean run, clean.shape[0]" if name == "source" else "position, hidden.shape[1]"
            raise ValueError(f"{name} must hold -1 or an index in [0, {bound}) ({what}); "
                             f"got values from {lo} to {hi}")
    if repeats and got[-1]:
        raise ValueError("subject positions must be distinct within a row (pad with -1); got "
                         f"{subject.tolist()}")
