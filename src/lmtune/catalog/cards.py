"""Asset cards: YAML documents that register models, tokenizers and datasets by name.

Sources, in order: the cards shipped in lmtune's ``assets/``, then the user
directories: fairseq2's (``$FAIRSEQ2_USER_ASSET_DIR``, default
``$XDG_CONFIG_HOME/fairseq2/assets`` or ``~/.config/fairseq2/assets``, where
fairseq2's own tutorial puts cards) and lmtune's (``$LMTUNE_USER_ASSET_DIR``,
default ``$XDG_CONFIG_HOME/lmtune/assets`` or ``~/.config/lmtune/assets``).

A user card named ``name@user`` overrides the keys of card ``name``; unlike
fairseq2 alone, a ``name@user`` card with no ``name`` to override registers
``name`` as a brand-new card. ``base:`` inherits every key the card does not set
(``model_config``/``tokenizer_config`` are merged key by key), except that
``init: random`` and ``checkpoint:`` exclude each other: the nearer card's wins. Relative paths in
``checkpoint``, ``tokenizer`` and ``data`` are relative to the card's file. A card with no
``model_family`` whose checkpoint is a Hugging Face directory is completed from its
``config.json`` (``lmtune.catalog.hf_model_dir``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.catalog.hf_model_dir import with_detected_model
from lmtune.errors import UserError, did_you_mean
from lmtune.files import deep_merge
from lmtune.resources import assets_dir

PATH_KEYS = ("checkpoint", "tokenizer", "data")
MERGED_KEYS = ("model_config", "tokenizer_config")
USER_ENV = "user"
# fairseq2 accepts these spellings too.
ALIASES = {
    "model_config_overrides": "model_config",
    "model_config_override": "model_config",
    "tokenizer_config_overrides": "tokenizer_config",
    "tokenizer_config_override": "tokenizer_config",
}


@dataclass(kw_only=True)
class Card:
    name: str
    fields: dict[str, object]
    file: Path
    override_files: list[Path] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if "data" in self.fields or "dataset_family" in self.fields:
            return "dataset"
        if "model_family" in self.fields or "model_arch" in self.fields:
            return "model"
        if "tokenizer_family" in self.fields or "tokenizer" in self.fields:
            return "tokenizer"
        return "other"

    def get(self, key: str, default: object = None) -> object:
        return self.fields.get(key, default)

    @property
    def where(self) -> str:
        files = [self.file, *self.override_files]
        return ", ".join(str(f) for f in files)


def user_dirs() -> list[Path]:
    """The user's card directories, each once: users often set both variables to one directory."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    fs2 = os.environ.get("FAIRSEQ2_USER_ASSET_DIR")
    lm = os.environ.get("LMTUNE_USER_ASSET_DIR")
    dirs = [
        Path(fs2).expanduser() if fs2 else config_home / "fairseq2" / "assets",  # as fairseq2 itself looks it up
        Path(lm).expanduser() if lm else config_home / "lmtune" / "assets",
    ]
    unique: dict[Path, Path] = {}
    for d in dirs:
        unique.setdefault(d.resolve(), d)  # the same directory by another spelling or a symlink is read once
    return list(unique.values())


def _card_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def read_card_file(path: Path) -> list[tuple[str, dict[str, object]]]:
    """The (name, fields) documents of one YAML file, paths made absolute."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as ex:
        mark = ex.problem_mark or ex.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: YAML syntax error: {ex.problem or ex.context}.") from None
    except OSError as ex:
        raise UserError(f"{path}: cannot read card file ({ex.strerror}).") from None
    out: list[tuple[str, dict[str, object]]] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"].strip():
            raise UserError(f"{path}: document {i} is not a card; every card is a mapping with a 'name:' string.")
        fields: dict[str, object] = {(ALIASES.get(k) or k): v for k, v in doc.items() if k != "name"}
        for key in PATH_KEYS:
            value = fields.get(key)
            if isinstance(value, str):
                fields[key] = _absolute(value, path.parent)
        out.append((doc["name"].strip(), fields))
    return out


def _absolute(value: str, base: Path) -> str:
    if "://" in value and not value.startswith("file://"):
        return value  # a hub URI; refused when used, since nothing is downloaded at run time
    if value.startswith("file://"):
        value = value[len("file://"):]
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


class CardStore:
    def __init__(self, shipped: Path | None = None, users: list[Path] | None = None) -> None:
        self._raw: dict[str, tuple[dict[str, object], Path]] = {}
        self._overrides: dict[str, list[tuple[dict[str, object], Path]]] = {}
        for path in _card_files(shipped if shipped is not None else assets_dir()):
            self._add_file(path, user=False)
        for directory in users if users is not None else user_dirs():
            for path in _card_files(directory):
                self._add_file(path, user=True)
        # A name@user card with nothing to override is a brand-new card.
        for name, overrides in list(self._overrides.items()):
            if name not in self._raw:
                fields, path = overrides.pop(0)
                self._raw[name] = (dict(fields), path)

    def _add_file(self, path: Path, user: bool) -> None:
        for name, fields in read_card_file(path):
            base_name, _, env = name.partition("@")
            if env:
                if env != USER_ENV:
                    continue  # other environments are fairseq2's business
                self._overrides.setdefault(base_name, []).append((fields, path))
                continue
            if name in self._raw:
                other = self._raw[name][1]
                hint = f"; to override a shipped card name it '{name}@user'" if user else ""
                raise UserError(f"{path}: card '{name}' is already defined in {other}{hint}.")
            self._raw[name] = (fields, path)

    def names(self) -> list[str]:
        return sorted(self._raw)

    def get(self, name: str) -> Card | None:
        if name.endswith("@user"):
            name = name[: -len("@user")]
        if name not in self._raw:
            return None
        return self._resolve(name, [])

    def require(self, name: str, kind: str) -> Card:
        card = self.get(name)
        if card is None:
            choices = [n for n in self.names() if self._resolve(n, []).kind == kind]
            raise UserError(f"unknown {kind} '{name}'; {did_you_mean(name, choices)}")
        return card

    def _own(self, name: str) -> tuple[dict[str, object], Path, list[Path]]:
        fields, path = self._raw[name]
        fields = dict(fields)
        files = []
        for override, file in self._overrides.get(name, []):
            fields.update(override)
            files.append(file)
        return fields, path, files

    def _resolve(self, name: str, chain: list[str]) -> Card:
        if name in chain:
            raise UserError(f"card '{name}' inherits from itself through base: {' -> '.join(chain + [name])}.")
        fields, path, files = self._own(name)
        base = fields.get("base")
        if base is not None:
            if not isinstance(base, str) or base not in self._raw:
                raise UserError(f"{path}: card '{name}' has base '{base}', which is not a card; {did_you_mean(str(base), self.names())}")
            parent = self._resolve(base, chain + [name]).fields
            merged = dict(parent)
            for key, value in fields.items():
                if key in MERGED_KEYS and isinstance(value, dict) and isinstance(parent.get(key), dict):
                    merged[key] = deep_merge(parent[key], value)  # type: ignore[arg-type]
                else:
                    merged[key] = value
            # Of init: random and checkpoint:, the one the nearer card sets wins.
            if "checkpoint" in fields and "init" not in fields:
                merged.pop("init", None)
            elif fields.get("init") == "random" and "checkpoint" not in fields:
                merged.pop("checkpoint", None)
            merged.pop("base", None)
            merged["base"] = base
            fields = merged
        if not chain:  # the card asked for, not a base it inherits: a bare HF directory is enough
            fields = with_detected_model(fields)
        return Card(name=name, fields=fields, file=path, override_files=files)
