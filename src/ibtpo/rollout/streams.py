"""Per-row random streams: every sampled token draws from a stream keyed by what it is, not by
the batch it happens to run in.

A continuation (one request to the engine) carries a 63-bit key, built with
`ibtpo.seeding.stream_key` from the run's seed, the tree (step and global prompt index) and the
continuation's number within its tree. Its token at position `t` (0 = first new token) is
drawn with the uniform `uniforms(keys, t)`, a counter-based hash (splitmix64's finaliser) in
integer arithmetic, so it is the same bits on any CPU or GPU, whatever the batch size, the
chunking, the number of ranks, or the order in which a scheduler runs the requests.

    uniform (key, t) = (mix64(key + (t + 1) * 0x9E3779B97F4A7C15) >> 11 + 0.5) / 2**53

`mix64` is splitmix64's finaliser; the uniform lies in (0, 1), never 0 or 1.
`reference_uniform` computes the same number in plain Python (the tests compare both).
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    """The int64 with the bits of the unsigned 64-bit `x`."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return torch.bitwise_right_shift(z, s) & ((1 << (64 - s)) - 1)


def uniforms(keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """(N,) float64 uniforms in (0, 1) of the streams `keys` (N,) int64 at token `position`: one
    int for every row, or (N,) int64, each row's own (rows that joined a running batch at
    different times, `ibtpo.rollout.pool`)."""
    if isinstance(position, torch.Tensor):
        z = keys + (position.to(torch.int64) + 1) * _signed(_GOLDEN)  # int64 wraps like uint64
    else:
        z = keys + _signed(((position + 1) * _GOLDEN) & _MASK64)  # int64 wraps like uint64
    z = (z ^ _shr(z, 30)) * _signed(_C1)
    z = (z ^ _shr(z, 27)) * _signed(_C2)
    z = z ^ _shr(z, 31)
    return (_shr(z, 11).double() + 0.5) / float(1 << 53)


def reference_uniform(key: int, position: int) -> float:
    """`uniforms` for one stream, in plain Python integers (the specification)."""
    z = (key + (position + 1) * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _C1) & _MASK64
    z = ((z ^ (z >> 27)) * _C2) & _MASK64
    z ^= z >> 31
    return ((z >> 11) + 0.5) / float(1 << 53)
