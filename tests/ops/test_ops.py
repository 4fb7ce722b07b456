"""Health counters and the rounding of reported numbers (ednerf_ns.ops): plain tensors, no model."""

from __future__ import annotations

import math

import torch

from ednerf_ns.ops.health import StepHealth, all_finite
from ednerf_ns.ops.metrics import difference, mean_finite, rounded


def test_step_counters_count_without_reading_the_device():
    health = StepHealth("cpu")
    for value in (1.0, float("nan"), float("inf"), 2.0, float("nan"), float("nan")):
        health.record(torch.tensor(value))
    assert health.read() == (4, 2)
    module = torch.nn.Linear(2, 2)
    assert all_finite(module)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    assert not all_finite(module)


def test_reported_numbers_skip_what_is_undefined():
    assert mean_finite([1.0, None, float("nan"), 2.0, torch.tensor(3.0)]) == 2.0
    assert mean_finite([None, float("inf")]) is None
    assert mean_finite([1 / 3]) == 0.3333
    assert difference(1.23456, 0.1) == 1.1346 and difference(None, 1.0) is None
    assert rounded(math.pi) == 3.1416 and rounded(float("nan")) is None and rounded(None) is None
