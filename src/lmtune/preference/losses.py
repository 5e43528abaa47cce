"""The preference criteria (``criterion.name=dpo|simpo|orpo|cpo``) as pure functions of log-probs.

Each criterion sees, per pair, the policy's summed log-prob of the chosen and of the rejected
response (the response tokens only), their token counts, and for DPO the reference model's
summed log-probs of the same tokens. It returns the loss summed over the pairs (the trainer
divides by the pair count summed over ranks and accumulated batches, so every pair weighs the
same) and per-pair rewards for the metrics.

Choices, each as in the paper or TRL where fairseq2 0.4 was silent:
- ``nll_scale`` adds the chosen response's NLL as a per-token mean within each pair (the SFT
  term of the ORPO paper), so a long response does not outweigh a short one.
- DPO's ``ipo`` loss, ``(h - 1/(2 beta))**2``, always uses per-token average log-probs (IPO
  paper section 5.2, TRL's ``loss_type="ipo"``), whatever ``length_normalization`` says.
- SimPO and ORPO use per-token average log-probs by definition; CPO uses sums (its paper, TRL).
- Rewards are ``beta * (policy - reference)`` for DPO and ``beta * policy`` (ORPO: ``orpo_lambda``)
  for the reference-free criteria, on the same (summed or averaged) log-probs the loss uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from lmtune.errors import UserError
from lmtune.options.preference import (
    DEFAULT_BETA,
    DEFAULT_NLL_SCALE,
    DEFAULT_SIMPO_GAMMA,
)

CRITERIA = ("dpo", "simpo", "orpo", "cpo")
DPO_LOSSES = ("sigmoid", "ipo")


@dataclass(kw_only=True)
class SequenceLogps:
    """Per-pair summed log-probs over the response tokens, and the token counts (float tensors)."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def averages(self) -> tuple[Tensor, Tensor]:
        return self.chosen / self.chosen_tokens, self.rejected / self.rejected_tokens


@dataclass(kw_only=True)
class PreferenceLoss:
    loss: Tensor
    """Summed over the pairs."""
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    """Per pair, detached."""

    @property
    def margins(self) -> Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> Tensor:
        """1.0 where the chosen response's reward is above the rejected one's."""
        return (self.chosen_rewards > self.rejected_rewards).to(self.chosen_rewards.dtype)


def check_criterion(name: str, key: str = "criterion.name") -> None:
    if name not in CRITERIA:
        raise UserError(f"{key}={name!r} is not a preference criterion; valid: {', '.join(CRITERIA)}.")


def _chosen_nll(policy: SequenceLogps) -> Tensor:
    return -policy.chosen / policy.chosen_tokens


def _result(per_pair: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor) -> PreferenceLoss:
    return PreferenceLoss(loss=per_pair.sum(), chosen_rewards=chosen_rewards.detach(), rejected_rewards=rejected_rewards.detach())


def dpo_loss(
    policy: SequenceLogps,
    reference: SequenceLogps,
    *,
    beta: float = DEFAULT_BETA["dpo"],
    nll_scale: float = DEFAULT_NLL_SCALE["dpo"],
    length_normalization: bool = False,
    loss_type: str = "sigmoid",
) -> PreferenceLoss:
    """``-logsigmoid(beta * h)`` (sigmoid) or ``(h - 1/(2 beta))**2`` (ipo), with
    ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``."""
    if loss_type not in DPO_LOSSES:
        raise UserError(f"criterion loss_type={loss_type!r} is not a DPO loss; valid: {', '.join(DPO_LOSSES)}.")
    if length_normalization or loss_type == "ipo":
        pc, pr = policy.averages()
        rc, rr = reference.averages()
    else:
        pc, pr, rc, rr = policy.chosen, policy.rejected, reference.chosen, reference.rejected
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    h = chosen_ratio - rejected_ratio
    per_pair = -logsigmoid(beta * h) if loss_type == "sigmoid" else (h - 1.0 / (2.0 * beta)) ** 2
    if nll_scale:
        per_pair = per_pair + nll_scale * _chosen_nll(policy)
    return _result(per_pair, beta * chosen_ratio, beta * rejected_ratio)


def simpo_loss(policy: SequenceLogps, *, beta: float = DEFAULT_BETA["simpo"], gamma: float = DEFAULT_SIMPO_GAMMA) -> PreferenceLoss:
    """``-logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)``; no reference model."""
    ac, ar = policy.averages()
    return _result(-logsigmoid(beta * (ac - ar) - gamma), beta * ac, beta * ar)


def _log_odds(avg_logp: Tensor) -> Tensor:
    """``log(p / (1 - p))`` of ``p = exp(avg_logp)``; ``log1p(-exp(x))`` is exact for small |x| via expm1."""
    return avg_logp - torch.log(-torch.expm1(avg_logp))


def orpo_loss(policy: SequenceLogps, *, orpo_lambda: float = 0.1) -> PreferenceLoss:
    """``NLL_chosen - orpo_lambda * logsigmoid(log_odds_chosen - log_odds_rejected)`` on
    per-token average log-probs (Hong et al. 2024)."""
    ac, ar = policy.averages()
    per_pair = _chosen_nll(policy) - orpo_lambda * logsigmoid(_log_odds(ac) - _log_odds(ar))
    return _result(per_pair, orpo_lambda * ac, orpo_lambda * ar)


def cpo_loss(policy: SequenceLogps, *, beta: float = DEFAULT_BETA["cpo"], nll_scale: float = DEFAULT_NLL_SCALE["cpo"]) -> PreferenceLoss:
    """``-logsigmoid(beta * (chosen - rejected)) + nll_scale * NLL_chosen`` on summed log-probs."""
    per_pair = -logsigmoid(beta * (policy.chosen - policy.rejected)) + nll_scale * _chosen_nll(policy)
    return _result(per_pair, beta * policy.chosen, beta * policy.rejected)


def needs_reference(name: str) -> bool:
    """Only DPO compares with a reference model; SimPO, ORPO and CPO are reference-free."""
    return name == "dpo"


def criterion_loss(name: str, policy: SequenceLogps, reference: SequenceLogps | None, **params: object) -> PreferenceLoss:
    """``criterion.name`` with its ``criterion.config`` keys as ``params``."""
    check_criterion(name)
    if name == "dpo":
        if reference is None:
            raise ValueError("dpo needs the reference log-probs")
        return dpo_loss(policy, reference, **params)  # type: ignore[arg-type]
    if name == "simpo":
        return simpo_loss(policy, **params)  # type: ignore[arg-type]
    if name == "orpo":
        return orpo_loss(policy, **params)  # type: ignore[arg-type]
    return cpo_loss(policy, **params)  # type: ignore[arg-type]
