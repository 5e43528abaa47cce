"""The preference train unit on a real tiny fairseq2 model: its loss and metrics equal a float64
hand computation from each sequence run alone; a policy equal to its reference gives log 2."""

from __future__ import annotations

import copy
import functools
import math
import random

import pytest
import torch

from test_preference_packing import _alone, _pairs, _tiny_model


def _bag():  # type: ignore[no-untyped-def]
    from fairseq2.device import CPU
    from fairseq2.metrics import MetricBag

    return MetricBag(CPU)


def _mean(bag, name: str) -> float:  # type: ignore[no-untyped-def]
    from fairseq2.metrics.aggregation import Mean

    return float(bag.get(name, Mean).compute())


def test_dpo_unit_loss_and_metrics_equal_a_hand_computation() -> None:
    from fairseq2.metrics.aggregation import Sum

    from lmtune.preference.losses import criterion_loss
    from lmtune.preference.packing import collate_pairs
    from lmtune.preference.reference import compute_reference_logps
    from lmtune.training.preference_unit import PreferenceTrainUnit

    policy = _tiny_model("document")
    reference_model = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    pairs = _pairs(random.Random(2), [(5, 6, 9), (8, 3, 3), (4, 12, 7)])
    ids = [0, 1, 2]
    reference = compute_reference_logps(reference_model, pairs, ids, max_num_tokens=200)
    beta, nll_scale = 0.3, 0.2
    unit = PreferenceTrainUnit(policy, functools.partial(criterion_loss, "dpo", beta=beta, nll_scale=nll_scale))
    bag = _bag()
    unit.prepare_metric_bag(bag)
    loss, num_pairs = unit.process_batch(collate_pairs(pairs, [2, 0, 1], reference), bag)

    total, rewards, logps = 0.0, [], []
    for p in [2, 0, 1]:
        sums, counts = [], []
        for half in (0, 1):
            x = pairs.examples.item(2 * p + half)
            s, n = _alone(policy, x["tokens"], x["target_mask"])
            sums.append(float(s.detach()))
            counts.append(n)
        rc, rr = reference[p]
        h = (sums[0] - rc) - (sums[1] - rr)
        total += math.log1p(math.exp(-beta * h)) - nll_scale * sums[0] / counts[0]
        rewards.append((beta * (sums[0] - rc), beta * (sums[1] - rr)))
        logps.append(sums)
    assert num_pairs == 3
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert _mean(bag, "preference_loss") == pytest.approx(total / 3, rel=1e-5)
    assert _mean(bag, "chosen_reward") == pytest.approx(sum(c for c, _ in rewards) / 3, rel=1e-5, abs=1e-6)
    assert _mean(bag, "rejected_reward") == pytest.approx(sum(r for _, r in rewards) / 3, rel=1e-5, abs=1e-6)
    assert _mean(bag, "reward_margin") == pytest.approx(sum(c - r for c, r in rewards) / 3, rel=1e-5, abs=1e-6)
    assert _mean(bag, "reward_accuracy") == pytest.approx(sum(c > r for c, r in rewards) / 3)
    assert _mean(bag, "chosen_logps") == pytest.approx(sum(c for c, _ in logps) / 3, rel=1e-5)
    assert int(bag.get("num_examples", Sum).compute()) == 3
    assert int(bag.get("num_target_elements", Sum).compute()) == 6 + 9 + 3 + 3 + 12 + 7
    loss.backward()  # the loss reaches the policy's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_a_policy_equal_to_its_reference_gives_log_2_per_pair() -> None:
    from lmtune.preference.losses import criterion_loss
    from lmtune.preference.packing import collate_pairs
    from lmtune.preference.reference import compute_reference_logps
    from lmtune.training.preference_unit import PreferenceTrainUnit

    model = _tiny_model("document")
    pairs = _pairs(random.Random(4), [(3, 5, 7), (6, 2, 9), (2, 8, 1), (7, 7, 7)])
    reference = compute_reference_logps(model, pairs, range(4), max_num_tokens=200)
    model.train()
    unit = PreferenceTrainUnit(model, functools.partial(criterion_loss, "dpo", beta=0.1))
    bag = _bag()
    unit.prepare_metric_bag(bag)
    loss, _ = unit.process_batch(collate_pairs(pairs, [0, 1, 2, 3], reference), bag)
    assert loss.item() == pytest.approx(4 * math.log(2), abs=1e-5)
    assert abs(_mean(bag, "reward_margin")) < 1e-6
