"""What a model, tokenizer or dataset name refers to, resolved to files.

``model=`` is a card name, or ``last_checkpoint`` / ``best_checkpoint`` /
``checkpoint_step_N`` of a training run's checkpoint directory. ``dataset=`` is a .jsonl file, a directory
(``train.jsonl`` or fairseq2's GSM8K layout ``sft/train.jsonl``), or a card.
Every failure is a UserError naming the card or path at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtune.catalog.cards import Card, CardStore
from lmtune.catalog.hf_model_dir import why_not_detected
from lmtune.errors import UserError, did_you_mean
from lmtune.options.lora import LoraSettings
from lmtune.run_dir import (
    best_step,
    checkpoint_steps,
    is_checkpoint_dir,
    read_cards,
    read_hf_export_card,
    read_lora_card,
    step_model_dir,
)
from lmtune.safe_load import check_hf_dir

# What a user may write for model= to mean a checkpoint of a training run.
CHECKPOINT_NAME = re.compile(r"^(last_checkpoint|best_checkpoint|checkpoint_step_(\d+))$")


@dataclass(kw_only=True)
class TokenizerSpec:
    name: str
    family: str
    path: Path
    config: dict[str, object] = field(default_factory=dict)

    @property
    def hf_dir(self) -> Path | None:
        """The Hugging Face tokenizer directory, when this tokenizer is one or its
        tokenizer.model sits in one (a Llama 2 HF directory, loaded with SentencePiece)."""
        directory = self.path if self.path.is_dir() else self.path.parent
        return directory if (directory / "tokenizer.json").is_file() else None

    def as_card(self) -> dict[str, object]:
        return {"name": self.name, "tokenizer": str(self.path), "tokenizer_family": self.family, "tokenizer_config": self.config}


@dataclass(kw_only=True)
class LoraSpec:
    """A LoRA run's adapters: their settings, the seed of their initial A, and the frozen base model they sit on."""

    settings: LoraSettings
    """Planned: ``rank`` set, ``targets`` the Hugging Face projection names (a transformers-backed model's: its linear layers' names)."""
    base: ModelSpec
    seed: int = 0

    def as_card(self) -> dict[str, object]:
        """``lora.yaml``: the settings' keys, the seed and the base, flat as lmtune has always written them."""
        s, b = self.settings, self.base
        base = {"name": b.name, "model_family": b.family, "model_arch": b.arch, "model_config": b.config, "checkpoint": str(Path(b.checkpoint).absolute()) if b.checkpoint else None}
        return {"rank": s.rank, "alpha": s.alpha, "dropout": s.dropout, "targets": s.targets, "quantize": s.quantize, "seed": self.seed, "base": base}

    @staticmethod
    def from_card(card: dict[str, Any], source: str) -> LoraSpec:
        b: dict[str, Any] = card["base"]
        arch = b.get("model_arch")
        base = ModelSpec(
            name=str(b["name"]), family=str(b["model_family"]), arch=str(arch) if arch else None, config=dict(b.get("model_config") or {}),
            checkpoint=Path(str(b["checkpoint"])) if b.get("checkpoint") else None, source=source,
        )  # fmt: skip
        settings = LoraSettings(rank=int(card["rank"]), alpha=float(card["alpha"]), dropout=float(card["dropout"]), targets=[str(t) for t in card["targets"]], quantize=card["quantize"])
        return LoraSpec(settings=settings, base=base, seed=int(card.get("seed", 0)))


@dataclass(kw_only=True)
class ModelSpec:
    name: str
    family: str
    arch: str | None
    config: dict[str, object]
    checkpoint: Path | None
    source: str
    tokenizer: TokenizerSpec | None = None
    step: int | None = None
    """The step of a training run's checkpoint, and that run's OUT/checkpoints."""
    run_checkpoints: Path | None = None
    lora: LoraSpec | None = None
    """For a LoRA run's checkpoint: ``checkpoint`` holds only the adapters, and this says how to rebuild the model."""
    hf_export: dict[str, object] | None = None
    """For a model that fairseq2 builds as another family (Mistral as Llama): the HF ``model_type`` it
    exports as and its ``sliding_window`` (lmtune.export.mistral_config); None: the family's own."""


@dataclass(kw_only=True)
class DatasetSpec:
    name: str
    train: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    task: str | None = None
    labels: list[str] | None = None


# ---------------------------------------------------------------- tokenizers


def _sniff_tokenizer_file(path: Path) -> str:
    """'tiktoken' for Llama 3's base64 rank file, else 'sp' (SentencePiece)."""
    with path.open("rb") as fp:
        head = fp.read(256)
    first = head.split(b"\n", 1)[0]
    return "tiktoken" if re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", first) else "sp"


def tokenizer_from_card(card: Card) -> TokenizerSpec:
    family = card.get("tokenizer_family") or card.get("model_family")
    raw = card.get("tokenizer")
    if not isinstance(family, str):
        raise UserError(f"card '{card.name}' ({card.where}) has no tokenizer_family.")
    if not isinstance(raw, str):
        raise UserError(f"card '{card.name}' has no 'tokenizer:' path; add a user card '{card.name}@user' with 'tokenizer: /path/to/tokenizer' (see README).")
    if "://" in raw:
        raise UserError(f"card '{card.name}' has tokenizer {raw}, a hub address; lmtune downloads nothing at run time, so point 'tokenizer:' at a local file or directory.")
    path = Path(raw)
    if not path.exists():
        raise UserError(f"card '{card.name}' ({card.where}): tokenizer {path} does not exist.")
    config = dict(card.get("tokenizer_config") or {})  # type: ignore[call-overload]
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    if family == "llama":
        path, config["impl"] = _llama_tokenizer_impl(card, path, config.get("impl"))
    elif path.is_dir() and not (path / "tokenizer.json").is_file():
        raise UserError(f"card '{card.name}': tokenizer directory {path} has no tokenizer.json.")
    spec = TokenizerSpec(name=card.name, family=family, path=path, config=config)
    if spec.hf_dir is not None:
        check_hf_dir(spec.hf_dir, card=card.name, trusted=card.get("trust_remote_code"))
    return spec


def _llama_tokenizer_impl(card: Card, path: Path, impl: object) -> tuple[Path, str]:
    """The file and fairseq2 impl for a Llama tokenizer: an HF directory ('hg'), or a
    tokenizer.model that is SentencePiece ('sp', Llama 2) or tiktoken (Llama 3)."""
    if not path.is_dir():
        return path, impl if isinstance(impl, str) else _sniff_tokenizer_file(path)
    model_file = path / "tokenizer.model"
    has_json = (path / "tokenizer.json").is_file()
    if impl is None and model_file.is_file():
        sniffed = _sniff_tokenizer_file(model_file)
        # Llama 2 HF directories ship tokenizer.json beside SentencePiece's tokenizer.model;
        # fairseq2's 'hg' impl knows only Llama 3's special tokens (BOS would become <unk>).
        if sniffed == "sp" or not has_json:
            impl = sniffed
    if impl in ("sp", "tiktoken"):
        if not model_file.is_file():
            raise UserError(f"card '{card.name}': tokenizer_config impl '{impl}' needs a tokenizer.model file, and tokenizer directory {path} has none.")
        return model_file, str(impl)
    if impl == "hg" or (impl is None and has_json):
        if not has_json:
            raise UserError(f"card '{card.name}': tokenizer_config impl 'hg' needs a tokenizer.json file, and tokenizer directory {path} has none.")
        return path, "hg"
    raise UserError(f"card '{card.name}': tokenizer directory {path} has neither tokenizer.json nor tokenizer.model.")


def resolve_tokenizer(store: CardStore, ref: str) -> TokenizerSpec:
    card = store.get(ref)
    if card is None:
        choices = [n for n in store.names() if "tokenizer" in store.get(n).fields or store.get(n).kind == "tokenizer"]  # type: ignore[union-attr]
        raise UserError(f"unknown tokenizer '{ref}'; {did_you_mean(ref, choices)}")
    tref = card.get("tokenizer_ref")
    if isinstance(tref, str) and "tokenizer" not in card.fields:
        return resolve_tokenizer(store, tref)
    return tokenizer_from_card(card)


# -------------------------------------------------------------------- models


def resolve_model(store: CardStore, ref: str, checkpoint_dir: Path | None, key: str = "resume_checkpoint_dir") -> ModelSpec:
    m = CHECKPOINT_NAME.match(ref)
    if m:
        if checkpoint_dir is None:
            raise UserError(f"model={ref} names a training checkpoint; also set {key}=OUT/checkpoints of the run it comes from.")
        return model_from_checkpoint_dir(checkpoint_dir, "best" if ref == "best_checkpoint" else None if m.group(2) is None else int(m.group(2)), key)
    if store.get(ref) is None and checkpoint_dir is not None and is_checkpoint_dir(checkpoint_dir):
        # e.g. model=checkpoint_$(basename "$CKPT_DIR") from fairseq2's tutorial: name what the directory does hold.
        held = checkpoint_names(checkpoint_dir)
        holds = f"holds {', '.join(held)}" if held else "holds no complete checkpoint yet"
        raise UserError(f"unknown model '{ref}': it is no model card, and {key}={checkpoint_dir} {holds}.")
    return model_from_card(store, store.require(ref, "model"))


def checkpoint_names(checkpoint_dir: Path) -> list[str]:
    """What model= may name in a training run's checkpoint directory."""
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        return []
    best = ["best_checkpoint"] if best_step(checkpoint_dir) is not None else []
    return ["last_checkpoint", *best, *(f"checkpoint_step_{s}" for s in steps)]


def model_from_card(store: CardStore, card: Card, checkpoint: Path | None = None, *, need_weights: bool = True) -> ModelSpec:
    """The spec a model card describes. ``checkpoint`` stands in for the card's own weights
    (an export of a checkpoint the card describes); with ``need_weights=False`` a card
    without weights is fine (counting tokens needs none) and its tokenizer is not resolved."""
    family = card.get("model_family")
    if not isinstance(family, str):
        raise UserError(why_not_detected(card.fields, card.name, card.where))
    arch = card.get("model_arch")
    config = dict(card.get("model_config") or {})  # type: ignore[call-overload]
    if not need_weights:
        return ModelSpec(name=card.name, family=family, arch=arch if isinstance(arch, str) else None, config=config, checkpoint=None, source=str(card.file))
    path = checkpoint if checkpoint is not None else _card_checkpoint(card)
    if family == "mistral" and path is not None and (path / "config.json").is_file():
        raise UserError(
            f"card '{card.name}' ({card.where}): model_family 'mistral' is fairseq2's reference Mistral, which reads no Hugging Face weights, "
            f"and checkpoint {path} is a Hugging Face directory; write the card as name and checkpoint only (no model_family, model_arch or model_config), "
            "and lmtune builds what its config.json describes (a Mistral as the llama family, exported as MistralForCausalLM)."
        )
    tokenizer = None
    if "tokenizer" in card.fields or "tokenizer_ref" in card.fields:
        tokenizer = resolve_tokenizer(store, card.name)
    hf_export = card.get("hf_export")
    return ModelSpec(
        name=card.name, family=family, arch=arch if isinstance(arch, str) else None, config=config, checkpoint=path, source=str(card.file), tokenizer=tokenizer,
        hf_export=dict(hf_export) if isinstance(hf_export, dict) else None,
    )  # fmt: skip


def _card_checkpoint(card: Card) -> Path | None:
    if card.get("init") == "random":
        return None  # no checkpoint is read, not even one the card inherits through base:
    checkpoint = card.get("checkpoint")
    if checkpoint is None:
        raise UserError(f"model card '{card.name}' has no checkpoint; add a user card '{card.name}@user' with 'checkpoint: /path/to/weights' (or 'init: random' to train from scratch).")
    if not isinstance(checkpoint, str) or "://" in checkpoint:
        raise UserError(f"card '{card.name}' has checkpoint {checkpoint}, a hub address; lmtune downloads nothing at run time, so point 'checkpoint:' at local files.")
    path = Path(checkpoint)
    if not path.exists():
        raise UserError(f"card '{card.name}' ({card.where}): checkpoint {path} does not exist.")
    if path.is_dir():
        check_hf_dir(path, card=card.name, trusted=card.get("trust_remote_code"))
    return path


def _mapping(value: object) -> dict[str, object]:
    """A card's config mapping (``model_config``, ``tokenizer_config``); empty when absent."""
    return dict(value) if isinstance(value, dict) else {}


def model_from_checkpoint_dir(checkpoint_dir: Path, step: int | Literal["best"] | None, key: str) -> ModelSpec:
    """The model of a training run's checkpoint ``step`` (None: the last one; "best": the best scored)."""
    if not is_checkpoint_dir(checkpoint_dir):
        raise UserError(f"{key}={checkpoint_dir} is not a training run's checkpoint directory (no model.yaml); use OUT/checkpoints of an lmtune run.")
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        raise UserError(f"{checkpoint_dir} holds no complete checkpoint yet.")
    name = "last_checkpoint" if step is None else "best_checkpoint" if step == "best" else f"checkpoint_step_{step}"
    if step == "best":
        step = best_step(checkpoint_dir)
        if step is None:
            raise UserError(f"model=best_checkpoint: {checkpoint_dir} has no scored checkpoint; a run scores its checkpoints when trained with early_stopping.metric=... and validate_every_n_steps=N (use last_checkpoint or checkpoint_step_N here).")
    elif step is None:
        step = steps[-1]
    if step not in steps:
        raise UserError(f"{checkpoint_dir} has no checkpoint_step_{step}; it has: {', '.join(checkpoint_names(checkpoint_dir))}.")
    assert isinstance(step, int)
    meta, t = read_cards(checkpoint_dir)
    tokenizer = None
    if t is not None:
        tokenizer = TokenizerSpec(name=str(t["name"]), family=str(t["tokenizer_family"]), path=Path(str(t["tokenizer"])), config=_mapping(t.get("tokenizer_config")))
    lora_card = read_lora_card(checkpoint_dir)
    lora = LoraSpec.from_card(lora_card, str(checkpoint_dir)) if lora_card is not None else None
    return ModelSpec(
        name=name, family=str(meta["model_family"]), arch=None, config=_mapping(meta.get("model_config")), checkpoint=step_model_dir(checkpoint_dir, step),
        source=str(checkpoint_dir), tokenizer=tokenizer, step=step, run_checkpoints=checkpoint_dir, lora=lora, hf_export=read_hf_export_card(checkpoint_dir),
    )  # fmt: skip


# ------------------------------------------------------------------ datasets

VALID_NAMES = ("valid.jsonl", "validation.jsonl", "dev.jsonl")


def resolve_dataset(store: CardStore, ref: str, key: str = "dataset") -> DatasetSpec:
    path = Path(ref).expanduser()
    if path.exists() or "/" in ref or ref.endswith(".jsonl"):
        return _dataset_from_path(ref, path, key)
    card = store.get(ref)
    if card is None:
        choices = [n for n in store.names() if store.get(n).kind == "dataset"]  # type: ignore[union-attr]
        raise UserError(f"{key}={ref} is neither an existing file or directory nor a dataset card; {did_you_mean(ref, choices)}")
    data = card.get("data")
    if not isinstance(data, str):
        raise UserError(f"dataset card '{card.name}' ({card.where}) has no 'data:' path.")
    root = Path(data)
    if not root.exists():
        raise UserError(f"dataset card '{card.name}' ({card.where}): data {root} does not exist; add a user card '{card.name}@user' with 'data: /path/to/your/copy'.")
    spec = _dataset_from_path(card.name, root, key) if root.is_file() or not any(k in card.fields for k in ("train", "test", "valid")) else DatasetSpec(name=card.name)
    for split in ("train", "valid", "test"):
        rel = card.get(split)
        if isinstance(rel, str):
            f = root / rel
            if not f.is_file():
                raise UserError(f"dataset card '{card.name}': {split} file {f} does not exist.")
            setattr(spec, split, f)
    task = card.get("task")
    spec.task = task if isinstance(task, str) else None
    labels = card.get("labels")
    if isinstance(labels, list) and any(isinstance(x, bool) or x is None for x in labels):
        # YAML reads bare yes/no/true/false/on/off as booleans and ~/null as None.
        raise UserError(f"dataset card '{card.name}' ({card.where}): labels {labels} hold YAML booleans or nulls; quote the labels, e.g. labels: [\"yes\", \"no\"].")
    spec.labels = [str(x) for x in labels] if isinstance(labels, list) else None
    return spec


def _dataset_from_path(name: str, path: Path, key: str) -> DatasetSpec:
    if not path.exists():
        raise UserError(f"{key}={name}: no such file or directory.")
    if path.is_file():
        return DatasetSpec(name=name, train=path, test=path)
    spec = DatasetSpec(name=name)
    for train in ("train.jsonl", "sft/train.jsonl"):
        if (path / train).is_file():
            spec.train = path / train
            break
    for valid in VALID_NAMES:
        if (path / valid).is_file():
            spec.valid = path / valid
            break
    for test in ("test.jsonl", "test/test.jsonl"):
        if (path / test).is_file():
            spec.test = path / test
            break
    if spec.train is None and spec.test is None:
        raise UserError(f"{key}={name}: the directory has no train.jsonl, sft/train.jsonl, test.jsonl or test/test.jsonl.")
    return spec
