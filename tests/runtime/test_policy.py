"""Tests for pitguard.runtime.policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pitguard.core.errors import PitguardError
from pitguard.runtime.policy import ROUTES, DecisionPolicy, pit_probability, route


def test_pit_probability_matches_policy_forward_bitwise():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 3)).astype(np.float32)
    p = pit_probability(logits, 1.7, pit_index=2)
    p_t, _ = DecisionPolicy(temperature=1.7, pit_index=2)(torch.from_numpy(logits))
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p, p_t.numpy())


def test_route_convention():
    assert ROUTES == ("clean", "maybe", "pit")
    p = np.array([0.0, 0.29, 0.3, 0.5, 0.7, 0.71, 1.0, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(route(p, 0.3, 0.7), [0, 0, 1, 1, 2, 2, 2, 1])
    r = route(p, 0.5, 0.5)  # no maybe band, apart from NaN
    np.testing.assert_array_equal(r, [0, 0, 0, 2, 2, 2, 2, 1])
    assert r.dtype == np.int64
    with pytest.raises(PitguardError):
        route(p, 0.7, 0.3)


def test_policy_forward_agrees_with_route_including_at_thresholds():
    rng = np.random.default_rng(9)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(4000, 2)).astype(np.float32))
    logits[:3] = float("nan")
    p0, _ = DecisionPolicy(temperature=1.3)(logits)
    finite = np.sort(p0.numpy()[np.isfinite(p0.numpy())])
    # Thresholds equal to observed scores, so some crops sit exactly on them.
    pairs = [(finite[1000], finite[3000]), (finite[2000], finite[2000]), (0.0, 1.0), (0.2, 0.8)]
    for t_low, t_high in pairs:
        policy = DecisionPolicy(temperature=1.3, t_low=float(t_low), t_high=float(t_high))
        p, r = policy(logits)
        assert p.dtype == torch.float32 and r.dtype == torch.int64 and r.shape == (4000,)
        expected = route(p.numpy(), policy.t_low.item(), policy.t_high.item())
        np.testing.assert_array_equal(r.numpy(), expected)
    assert np.count_nonzero(p0.numpy() == finite[1000]) >= 1


def test_policy_rejects_crossed_thresholds():
    with pytest.raises(PitguardError):
        DecisionPolicy(t_low=0.6, t_high=0.4)


def test_policy_buffers_and_round_trip():
    policy = DecisionPolicy(temperature=1.2345678, t_low=0.1234567, t_high=0.7654321, pit_index=2)
    state = policy.state_dict()
    assert set(state) == {"temperature", "t_low", "t_high"}
    assert all(v.dtype == torch.float32 and v.shape == () for v in state.values())
    d = json.loads(json.dumps(policy.to_dict()))
    again = DecisionPolicy.from_dict(d)
    assert again.to_dict() == policy.to_dict()
    for key in state:
        assert torch.equal(again.state_dict()[key], state[key])
    assert again.pit_index == 2
    fresh = DecisionPolicy()
    fresh.load_state_dict(state)
    assert fresh.t_high.item() == policy.t_high.item()
    with pytest.raises(PitguardError):
        DecisionPolicy.from_dict({"temperature": 1.0})


def test_mass_on_maybe_never_helps_a_crop_to_clean():
    """A clean/maybe/pit model's p(pit) is p(pit) + p(maybe): a crop the model calls maybe is
    not routed clean on the strength of a low p(pit) alone."""
    probs = torch.tensor([[0.099, 0.9, 0.001], [0.995, 0.004, 0.001]])
    logits = probs.log()
    pit_only = DecisionPolicy(1.0, 0.01, 0.99, pit_index=2)
    not_clean = DecisionPolicy.from_dict({**pit_only.to_dict(), "maybe_index": 1})
    assert pit_only(logits)[1].tolist() == [0, 0]  # the maybe crop would have gone clean
    p, routes = not_clean(logits)
    assert routes.tolist() == [1, 0] and abs(float(p[0]) - 0.901) < 1e-6
    assert not_clean.to_dict()["maybe_index"] == 1 and "maybe_index" not in pit_only.to_dict()
