"""Tests for ibtpo.rollout.streams: counter-based uniforms, the same bits on any device."""

import torch

from ibtpo.rollout.streams import reference_uniform, uniforms
from ibtpo.seeding import stream_key


def test_uniforms_equal_the_plain_python_specification():
    """Integer arithmetic only (wrapping int64 multiplies, logical shifts): bit for bit."""
    keys = [0, 1, 2**62 + 12345, 2**63 - 1] + [stream_key(7, "t", i) for i in range(60)]
    for position in (0, 1, 95, 10**6):
        got = uniforms(torch.tensor(keys), position).tolist()
        assert got == [reference_uniform(k, position) for k in keys]


def test_uniforms_lie_in_the_open_interval_and_are_uniform():
    """200k draws (2k keys x 100 positions): mean 0.5 and every decile 0.1, within 0.005 (the
    decile's std is 6.7e-4, so 0.005 is 7 std)."""
    keys = torch.tensor([stream_key(3, i) for i in range(2000)])
    u = torch.cat([uniforms(keys, t) for t in range(100)])
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005
    deciles = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert float((deciles - 0.1).abs().max()) < 0.005


def test_neighbouring_keys_and_positions_are_not_correlated():
    """Keys k and k+1, positions t and t+1: correlation of 20k pairs below 0.05 (std 0.007)."""
    keys = torch.arange(20000) * 2
    for a, b in ((uniforms(keys, 0), uniforms(keys + 1, 0)),
                 (uniforms(keys, 0), uniforms(keys, 1))):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05


def test_per_row_positions_equal_the_specification():
    """A (N,) tensor of positions (rows that joined a batch at different times): row i gets the
    uniform of (key i, position i), bit for bit, the same as the scalar form."""
    keys = [0, 2**63 - 1] + [stream_key(5, "p", i) for i in range(30)]
    positions = [0, 10**6] + [(7 * i) % 97 for i in range(30)]
    got = uniforms(torch.tensor(keys), torch.tensor(positions)).tolist()
    assert got == [reference_uniform(k, p) for k, p in zip(keys, positions)]
    assert got[2:] == [float(uniforms(torch.tensor([k]), p)[0])
                       for k, p in zip(keys[2:], positions[2:])]
