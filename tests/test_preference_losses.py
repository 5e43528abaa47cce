"""Each preference criterion and its gradients against a float64 hand computation (math, loops)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lmtune.errors import UserError
from lmtune.preference.losses import (
    SequenceLogps,
    check_criterion,
    cpo_loss,
    dpo_loss,
    orpo_loss,
    simpo_loss,
)

N = 6


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _neg_logsig(x: float) -> float:
    return math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))


def _inputs(seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    counts_c = [float(rng.randint(1, 12)) for _ in range(N)]
    counts_r = [float(rng.randint(1, 12)) for _ in range(N)]
    # Average log-probs in (-3, -0.05): real sequences' values, and log(1 - p) stays finite.
    return {
        "pc": [-rng.uniform(0.05, 3.0) * n for n in counts_c],
        "pr": [-rng.uniform(0.05, 3.0) * n for n in counts_r],
        "rc": [-rng.uniform(0.05, 3.0) * n for n in counts_c],
        "rr": [-rng.uniform(0.05, 3.0) * n for n in counts_r],
        "nc": counts_c,
        "nr": counts_r,
    }


def _tensors(x: dict[str, list[float]]) -> tuple[SequenceLogps, SequenceLogps, list[torch.Tensor]]:
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in ("pc", "pr")) for k, v in x.items()}
    policy = SequenceLogps(chosen=t["pc"], rejected=t["pr"], chosen_tokens=t["nc"], rejected_tokens=t["nr"])
    reference = SequenceLogps(chosen=t["rc"], rejected=t["rr"], chosen_tokens=t["nc"], rejected_tokens=t["nr"])
    return policy, reference, [t["pc"], t["pr"]]


def _check(result, leaves, loss: float, d_pc: list[float], d_pr: list[float]) -> None:  # type: ignore[no-untyped-def]
    g_pc, g_pr = torch.autograd.grad(result.loss, leaves)
    assert result.loss.item() == pytest.approx(loss, rel=1e-12, abs=1e-12)
    assert g_pc.tolist() == pytest.approx(d_pc, rel=1e-10, abs=1e-12)
    assert g_pr.tolist() == pytest.approx(d_pr, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("length_normalization", [False, True])
@pytest.mark.parametrize("nll_scale", [0.0, 0.7])
def test_dpo_sigmoid_and_its_gradients_by_hand(length_normalization: bool, nll_scale: float) -> None:
    x, beta = _inputs(1), 0.3
    total, d_pc, d_pr, rewards = 0.0, [], [], []
    for i in range(N):
        sc = 1.0 / x["nc"][i] if length_normalization else 1.0
        sr = 1.0 / x["nr"][i] if length_normalization else 1.0
        h = sc * (x["pc"][i] - x["rc"][i]) - sr * (x["pr"][i] - x["rr"][i])
        total += _neg_logsig(beta * h) + nll_scale * (-x["pc"][i] / x["nc"][i])
        # d/dz of -log sigmoid(z) is -sigmoid(-z)
        d_pc.append(-_sig(-beta * h) * beta * sc - nll_scale / x["nc"][i])
        d_pr.append(_sig(-beta * h) * beta * sr)
        rewards.append((beta * sc * (x["pc"][i] - x["rc"][i]), beta * sr * (x["pr"][i] - x["rr"][i])))
    policy, reference, leaves = _tensors(x)
    result = dpo_loss(policy, reference, beta=beta, nll_scale=nll_scale, length_normalization=length_normalization)
    _check(result, leaves, total, d_pc, d_pr)
    assert result.chosen_rewards.tolist() == pytest.approx([c for c, _ in rewards], rel=1e-12)
    assert result.rejected_rewards.tolist() == pytest.approx([r for _, r in rewards], rel=1e-12)
    assert result.margins.tolist() == pytest.approx([c - r for c, r in rewards], rel=1e-10, abs=1e-12)
    assert result.accuracies.tolist() == [1.0 if c > r else 0.0 for c, r in rewards]


def test_dpo_ipo_uses_average_log_probs_and_its_gradients_by_hand() -> None:
    x, beta, nll_scale = _inputs(2), 0.2, 0.5
    total, d_pc, d_pr = 0.0, [], []
    for i in range(N):
        nc, nr = x["nc"][i], x["nr"][i]
        h = (x["pc"][i] - x["rc"][i]) / nc - (x["pr"][i] - x["rr"][i]) / nr
        total += (h - 1.0 / (2.0 * beta)) ** 2 - nll_scale * x["pc"][i] / nc
        d_pc.append(2.0 * (h - 1.0 / (2.0 * beta)) / nc - nll_scale / nc)
        d_pr.append(-2.0 * (h - 1.0 / (2.0 * beta)) / nr)
    policy, reference, leaves = _tensors(x)
    for normalise in (False, True):  # IPO averages either way
        result = dpo_loss(policy, reference, beta=beta, nll_scale=nll_scale, length_normalization=normalise, loss_type="ipo")
        _check(result, leaves, total, d_pc, d_pr)


def test_simpo_and_its_gradients_by_hand() -> None:
    x, beta, gamma = _inputs(3), 2.0, 0.5
    total, d_pc, d_pr = 0.0, [], []
    for i in range(N):
        nc, nr = x["nc"][i], x["nr"][i]
        z = beta * (x["pc"][i] / nc - x["pr"][i] / nr) - gamma
        total += _neg_logsig(z)
        d_pc.append(-_sig(-z) * beta / nc)
        d_pr.append(_sig(-z) * beta / nr)
    policy, _, leaves = _tensors(x)
    _check(simpo_loss(policy, beta=beta, gamma=gamma), leaves, total, d_pc, d_pr)


def test_orpo_log_odds_and_its_gradients_by_hand() -> None:
    x, lam = _inputs(4), 0.25
    total, d_pc, d_pr = 0.0, [], []
    for i in range(N):
        nc, nr = x["nc"][i], x["nr"][i]
        ac, ar = x["pc"][i] / nc, x["pr"][i] / nr
        odds_c = math.log(math.exp(ac) / (1.0 - math.exp(ac)))
        odds_r = math.log(math.exp(ar) / (1.0 - math.exp(ar)))
        u = odds_c - odds_r
        total += -ac + lam * _neg_logsig(u)
        # d log_odds / d avg = 1 / (1 - e^avg)
        d_pc.append((-1.0 - lam * _sig(-u) / (1.0 - math.exp(ac))) / nc)
        d_pr.append(lam * _sig(-u) / (1.0 - math.exp(ar)) / nr)
    policy, _, leaves = _tensors(x)
    _check(orpo_loss(policy, orpo_lambda=lam), leaves, total, d_pc, d_pr)


def test_cpo_and_its_gradients_by_hand() -> None:
    x, beta, nll_scale = _inputs(5), 0.1, 1.0
    total, d_pc, d_pr = 0.0, [], []
    for i in range(N):
        z = beta * (x["pc"][i] - x["pr"][i])
        total += _neg_logsig(z) - nll_scale * x["pc"][i] / x["nc"][i]
        d_pc.append(-_sig(-z) * beta - nll_scale / x["nc"][i])
        d_pr.append(_sig(-z) * beta)
    policy, _, leaves = _tensors(x)
    _check(cpo_loss(policy, beta=beta, nll_scale=nll_scale), leaves, total, d_pc, d_pr)


def test_known_values() -> None:
    one = torch.ones(3, dtype=torch.float64)
    logps = torch.tensor([-4.0, -2.0, -9.0], dtype=torch.float64)
    same = SequenceLogps(chosen=logps, rejected=logps, chosen_tokens=one * 2, rejected_tokens=one * 2)
    # Policy equal to the reference: every pair's DPO loss is log 2, rewards and accuracy 0.
    dpo = dpo_loss(same, same, beta=0.5)
    assert dpo.loss.item() == pytest.approx(3 * math.log(2), rel=1e-14)
    assert dpo.margins.tolist() == [0.0, 0.0, 0.0] and dpo.accuracies.tolist() == [0.0, 0.0, 0.0]
    # IPO at h = 0: (1 / (2 beta))^2 = 1 per pair.
    assert dpo_loss(same, same, beta=0.5, loss_type="ipo").loss.item() == pytest.approx(3.0, rel=1e-14)
    # SimPO with equal responses: -log sigmoid(-gamma) per pair.
    assert simpo_loss(same, gamma=1.0).loss.item() == pytest.approx(3 * math.log1p(math.e), rel=1e-14)
    # ORPO with equal responses: the mean NLL plus lambda * log 2.
    assert orpo_loss(same, orpo_lambda=1.0).loss.item() == pytest.approx(2 + 1 + 4.5 + 3 * math.log(2), rel=1e-14)


def test_an_unknown_criterion_lists_the_valid_ones() -> None:
    check_criterion("dpo")
    with pytest.raises(UserError, match=r"criterion.name='kto' is not a preference criterion; valid: dpo, simpo, orpo, cpo\."):
        check_criterion("kto")
    x = _inputs(0)
    policy, reference, _ = _tensors(x)
    with pytest.raises(UserError, match="valid: sigmoid, ipo"):
        dpo_loss(policy, reference, loss_type="hinge")


def test_nll_scale_defaults_to_each_criterions_own_in_options_and_loss_functions() -> None:
    """cpo's NLL term is on unless criterion.nll_scale says otherwise (the CPO paper's loss); dpo's is off.
    The options' default and the loss functions' defaults are one table."""
    import inspect

    from lmtune.options.preference import DEFAULT_NLL_SCALE, CriterionOptions
    from lmtune.preference.losses import criterion_loss

    for name, fn in (("dpo", dpo_loss), ("cpo", cpo_loss)):
        assert inspect.signature(fn).parameters["nll_scale"].default == DEFAULT_NLL_SCALE[name]
    assert DEFAULT_NLL_SCALE == {"dpo": 0.0, "cpo": 1.0}
    x, beta = _inputs(7), 0.1
    policy, reference, _ = _tensors(x)

    def cpo_by_hand(nll_scale: float) -> float:
        return sum(_neg_logsig(beta * (x["pc"][i] - x["pr"][i])) - nll_scale * x["pc"][i] / x["nc"][i] for i in range(N))

    cpo = CriterionOptions(name="cpo")
    assert cpo.nll_scale is None and cpo.params() == {"beta": beta, "nll_scale": 1.0}
    assert criterion_loss("cpo", policy, None, **cpo.params()).loss.item() == pytest.approx(cpo_by_hand(1.0), rel=1e-12)
    off = CriterionOptions(name="cpo", nll_scale=0.0)
    assert criterion_loss("cpo", policy, None, **off.params()).loss.item() == pytest.approx(cpo_by_hand(0.0), rel=1e-12)
    assert cpo_by_hand(1.0) != pytest.approx(cpo_by_hand(0.0))
    dpo = CriterionOptions(name="dpo")
    assert dpo.params()["nll_scale"] == 0.0 and CriterionOptions(name="dpo", nll_scale=0.5).params()["nll_scale"] == 0.5
    by_hand = sum(_neg_logsig(beta * ((x["pc"][i] - x["rc"][i]) - (x["pr"][i] - x["rr"][i]))) for i in range(N))
    assert criterion_loss("dpo", policy, reference, **dpo.params()).loss.item() == pytest.approx(by_hand, rel=1e-12)


def test_simpo_beta_and_gamma_default_to_simpos_own_in_options_loss_and_effective_config() -> None:
    """criterion.beta unset: dpo and cpo 0.1, simpo 2.0 with gamma 0.5 (SimPO's reference defaults,
    beta 2.0 and gamma/beta 0.25); one table feeds the options, the loss functions and the config a
    run saves (--dump-config prints what OUT/lmtune.yaml holds). It used to be 0.1 for simpo too."""
    import inspect

    import yaml

    from helpers import run_lmtune_in_process
    from lmtune.options.preference import DEFAULT_BETA, DEFAULT_SIMPO_GAMMA, CriterionOptions
    from lmtune.preference.losses import criterion_loss

    assert DEFAULT_BETA == {"dpo": 0.1, "simpo": 2.0, "cpo": 0.1} and DEFAULT_SIMPO_GAMMA == 0.5
    for name, fn in (("dpo", dpo_loss), ("simpo", simpo_loss), ("cpo", cpo_loss)):
        assert inspect.signature(fn).parameters["beta"].default == DEFAULT_BETA[name]
    assert inspect.signature(simpo_loss).parameters["gamma"].default == DEFAULT_SIMPO_GAMMA
    simpo = CriterionOptions(name="simpo")
    assert simpo.params() == {"beta": 2.0, "gamma": 0.5}
    assert CriterionOptions(name="simpo", beta=0.3).params() == {"beta": 0.3, "gamma": 0.5}
    x = _inputs(8)
    policy, _, _ = _tensors(x)
    by_hand = sum(_neg_logsig(2.0 * (x["pc"][i] / x["nc"][i] - x["pr"][i] / x["nr"][i]) - 0.5) for i in range(N))
    assert criterion_loss("simpo", policy, None, **simpo.params()).loss.item() == pytest.approx(by_hand, rel=1e-12)
    for name, beta in (("simpo", 2.0), ("dpo", 0.1), ("cpo", 0.1)):
        r = run_lmtune_in_process("preference_finetune", "OUT", "--config", f"criterion.name={name}", "--dump-config")
        assert r.returncode == 0, r.stderr
        assert yaml.safe_load(r.stdout)["criterion"]["beta"] == beta, r.stdout
    r = run_lmtune_in_process("preference_finetune", "OUT", "--config", "criterion.name=simpo", "criterion.beta=2.5", "--dump-config")
    assert yaml.safe_load(r.stdout)["criterion"]["beta"] == 2.5
    r = run_lmtune_in_process("preference_finetune", "OUT", "--config", "criterion.name=orpo", "--dump-config")
    assert yaml.safe_load(r.stdout)["criterion"]["beta"] is None  # orpo has no beta
