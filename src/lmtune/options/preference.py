"""The keys of ``lmtune preference_finetune``: the keys every training run has
(``lmtune.options.training``), fine-tuning's where they mean the same (the encoded cache,
early stopping, LoRA), and preference tuning's own: the criterion and the reference model.
fairseq2's ``criterion.config.*`` keys are flat here (``criterion.beta``). Free of heavy
imports, for ``--help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmtune.options.finetune import EarlyStoppingOptions
from lmtune.options.lora import LoraSettings
from lmtune.options.training import LRSchedulerOptions, TrainingOptions, after

# criterion.beta and criterion.nll_scale when they are not set, per criterion; lmtune.preference.losses'
# functions take their defaults from here, so the options, the effective config and the losses agree.
# SimPO: beta 2.0 and gamma 0.5 are its reference implementation's defaults (princeton-nlp/SimPO,
# SimPOConfig: beta=2.0, gamma_beta_ratio=0.25, so gamma = 0.25 * 2.0 = 0.5); the paper's tuned
# settings vary by model (beta 2.0-10, gamma/beta 0.3-0.8), and the defaults are its starting point.
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "cpo": 0.1}
DEFAULT_SIMPO_GAMMA = 0.5
DEFAULT_NLL_SCALE = {"dpo": 0.0, "cpo": 1.0}


@dataclass(kw_only=True)
class CriterionOptions:
    """What the policy is trained to prefer (lmtune.preference.losses); each key is used by the criteria named in its help."""

    name: str = "dpo"
    """dpo (against the reference model), simpo, orpo or cpo (reference-free)."""
    beta: float | None = None
    """dpo, simpo, cpo: the reward scale; default (null): dpo 0.1, simpo 2.0 (SimPO's), cpo 0.1; the run's effective config holds the value used."""
    nll_scale: float | None = None
    """dpo, cpo: weight of the chosen response's per-token NLL added to each pair's loss; default (null): dpo 0 (none), cpo 1 (the CPO paper's NLL term)."""
    length_normalization: bool = False
    """dpo: per-token average log-probs instead of sums (ipo always averages)."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """dpo: sigmoid (DPO) or ipo."""
    gamma: float = DEFAULT_SIMPO_GAMMA
    """simpo: the target reward margin (SimPO's default: gamma/beta 0.25 of beta 2.0)."""
    orpo_lambda: float = 0.1
    """orpo: the weight of the odds-ratio term."""

    def with_defaults(self) -> CriterionOptions:
        """These options with ``beta`` filled in for ``name`` (orpo has none), as the run saves and uses them."""
        if self.beta is not None or self.name not in DEFAULT_BETA:
            return self
        return dataclasses.replace(self, beta=DEFAULT_BETA[self.name])

    def params(self) -> dict[str, object]:
        """The keyword arguments of ``criterion.name``'s loss function."""
        beta = self.with_defaults().beta
        if self.name == "dpo":
            return {"beta": beta, "nll_scale": self.nll_scale_for("dpo"), "length_normalization": self.length_normalization, "loss_type": self.loss_type}
        if self.name == "simpo":
            return {"beta": beta, "gamma": self.gamma}
        if self.name == "orpo":
            return {"orpo_lambda": self.orpo_lambda}
        return {"beta": beta, "nll_scale": self.nll_scale_for("cpo")}

    def nll_scale_for(self, name: str) -> float:
        """``nll_scale``, or the criterion's default: CPO's loss has the NLL term (Xu et al. 2024), DPO's not."""
        if self.nll_scale is not None:
            return self.nll_scale
        return DEFAULT_NLL_SCALE[name]


@dataclass(kw_only=True)
class PreferenceEarlyStoppingOptions(EarlyStoppingOptions):
    metric: str | None = None
    """A validation metric on the held-out pairs: valid.loss, valid.reward_accuracy, valid.reward_margin, valid.chosen_reward or valid.chosen_logps; also ranks checkpoints for keep_best_n_checkpoints and model=best_checkpoint."""


@dataclass(kw_only=True)
class PreferenceOptions(TrainingOptions):
    model: str | None = None
    """The policy's starting model: a model card name, or last_checkpoint / best_checkpoint / checkpoint_step_N with resume_checkpoint_dir (e.g. an SFT run's)."""
    reference_model: str | None = field(default=None, metadata=after("model"))
    """dpo's reference: a model card name (or last_checkpoint... of resume_checkpoint_dir); default: the policy's starting model (for LoRA, its base with the adapters off)."""
    dataset: str | None = None
    """Preference pairs: a .jsonl file, a directory (train.jsonl) or a dataset card; records {"src","tgt_chosen","tgt_rejected"} or {"prompt","chosen","rejected"}."""
    valid_dataset: str | None = None
    """Held-out pairs; default: valid.jsonl / validation.jsonl beside the training data."""
    resume_checkpoint_dir: Path | None = None
    """OUT/checkpoints of an earlier run (e.g. SFT), to start from model=last_checkpoint, best_checkpoint or checkpoint_step_N."""
    max_seq_len: int = 2048
    """Tokens of one prompt plus one response at most; longer pairs are skipped with a count."""
    max_num_tokens: int = 8192
    """Tokens per batch per rank; whole pairs are packed (both halves on one rank), so at least 2 * max_seq_len."""
    batch_size: int | None = None
    """Not used: preference batches are packed by max_num_tokens."""
    data_cache: bool = field(default=True, metadata=after("batch_size"))
    """Encode the pairs once into the user's shared cache, with the reference log-probs beside them; false: every rank encodes in memory."""
    learning_rate: float = 5.5e-6
    keep_best_n_checkpoints: int | None = field(default=None, metadata=after("validate_every_n_steps"))
    """Also keep the K checkpoints with the best early_stopping.metric (e.g. valid.reward_accuracy)."""
    criterion: CriterionOptions = field(default_factory=CriterionOptions)
    lr_scheduler: LRSchedulerOptions = field(default_factory=LRSchedulerOptions)
    early_stopping: PreferenceEarlyStoppingOptions = field(default_factory=PreferenceEarlyStoppingOptions)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def with_defaults(self) -> PreferenceOptions:
        """The effective options: what ``--dump-config`` prints and OUT's config saves (``criterion.beta`` filled in)."""
        return dataclasses.replace(self, criterion=self.criterion.with_defaults())
