"""Asset cards: shipped cards, user overrides, brand-new user cards, inheritance, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.catalog.cards import CardStore
from lmtune.catalog.specs import resolve_dataset, resolve_model, resolve_tokenizer
from lmtune.errors import UserError
from lmtune.resources import assets_dir

SHIPPED_MODELS = [
    "llama3_2_1b", "llama3_2_1b_instruct", "llama3_2_3b", "llama3_1_8b", "llama2_7b",
    "qwen25_0.5b", "qwen25_1.5b", "qwen25_3b", "qwen25_7b", "qwen25_7b_instruct",
    "qwen3_0.6b", "qwen3_1.7b", "qwen3_4b", "qwen3_8b",
    "gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl",
]


def test_shipped_model_cards_name_family_arch_and_tokenizer_family() -> None:
    store = CardStore()
    for name in SHIPPED_MODELS:
        card = store.get(name)
        assert card is not None, name
        assert card.kind == "model"
        assert card.get("model_family") in ("llama", "qwen", "gpt2")
        assert isinstance(card.get("model_arch"), str)
        assert card.get("tokenizer_family") == card.get("model_family")


@pytest.mark.slow
def test_shipped_archs_exist_in_fairseq2() -> None:
    from lmtune.catalog.specs import ModelSpec
    from lmtune.models.loading import model_config

    store = CardStore()
    for name in SHIPPED_MODELS:
        card = store.get(name)
        spec = ModelSpec(name=name, family=card.get("model_family"), arch=card.get("model_arch"), config=dict(card.get("model_config") or {}), checkpoint=None, source="")
        config = model_config(spec)
        assert config.vocab_size > 30000
    # Qwen2.5-0.5B has no fairseq2 arch of its own: its card overrides the sizes.
    spec = ModelSpec(name="q", family="qwen", arch="qwen25_1_5b", config=dict(store.get("qwen25_0.5b").get("model_config")), checkpoint=None, source="")
    config = model_config(spec)
    assert (config.model_dim, config.num_layers, config.tied_embeddings) == (896, 24, True)


def test_tutorial_user_cards_override_shipped_ones(isolated_user_cards: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "Llama-3.2-1B/original/consolidated.00.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    tok = ckpt.parent / "tokenizer.model"
    tok.write_text("IQ== 0\nIg== 1\n")
    (isolated_user_cards / "models.yaml").write_text(
        f'name: llama3_2_1b@user\ncheckpoint: "{ckpt}"\n---\nname: llama3@user\ntokenizer: "{tok}"\n'
    )
    store = CardStore()
    spec = resolve_model(store, "llama3_2_1b", None)
    assert spec.checkpoint == ckpt and spec.arch == "llama3_2_1b" and spec.family == "llama"
    # llama3@user reaches llama3_2_1b through base: inheritance.
    assert spec.tokenizer is not None and spec.tokenizer.path == tok
    assert spec.tokenizer.config["impl"] == "tiktoken"  # sniffed from the file
    assert str(isolated_user_cards / "models.yaml") in store.get("llama3_2_1b").where


def test_brand_new_user_card_with_base(isolated_user_cards: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    (isolated_user_cards / "mine.yaml").write_text(f"name: my_model\nbase: llama3_2_1b\ncheckpoint: {ckpt}\n---\nname: my_other@user\nbase: qwen25_7b\ncheckpoint: w.pt\n")
    (isolated_user_cards / "w.pt").write_bytes(b"x")
    store = CardStore()
    assert resolve_model(store, "my_model", None).arch == "llama3_2_1b"
    other = resolve_model(store, "my_other", None)  # defined only as @user: still found
    assert other.family == "qwen" and other.checkpoint == isolated_user_cards / "w.pt"  # relative to the card file


def test_fairseq2_user_dir_keeps_working(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fs2 = tmp_path / "fs2"
    fs2.mkdir()
    (fs2 / "c.yaml").write_text("name: from_fairseq2_dir\nbase: llama3_2_1b\ninit: random\n")
    monkeypatch.setenv("FAIRSEQ2_USER_ASSET_DIR", str(fs2))
    assert CardStore().get("from_fairseq2_dir") is not None


@pytest.mark.parametrize("where", ["xdg_config_home", "home"])
def test_fairseq2_default_user_dir_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str) -> None:
    """fairseq2's tutorial puts its card in ~/.config/fairseq2/assets ($XDG_CONFIG_HOME/fairseq2/assets when set)."""
    if where == "home":
        monkeypatch.delenv("XDG_CONFIG_HOME")
        monkeypatch.setenv("HOME", str(tmp_path))
        cards = tmp_path / ".config" / "fairseq2" / "assets"
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        cards = tmp_path / "xdg" / "fairseq2" / "assets"
    cards.mkdir(parents=True)
    (cards / "w.pt").write_bytes(b"x")
    (cards / "tutorial.yaml").write_text(
        "name: tutorial_model@user\nbase: llama3_2_1b\ncheckpoint: w.pt\n---\nname: tiny_llama@user\nmodel_config:\n  num_layers: 1\n"
    )
    store = CardStore()
    spec = resolve_model(store, "tutorial_model", None)  # a brand-new name@user card
    assert spec.arch == "llama3_2_1b" and spec.checkpoint == cards / "w.pt"
    assert store.get("tiny_llama").get("model_config")["num_layers"] == 1  # an override of a shipped card
    assert store.get("tiny_llama").override_files == [cards / "tutorial.yaml"]


def test_fairseq2_user_dir_variable_replaces_its_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    default = tmp_path / "xdg" / "fairseq2" / "assets"
    default.mkdir(parents=True)
    (default / "c.yaml").write_text("name: in_default\nbase: llama3_2_1b\ninit: random\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FAIRSEQ2_USER_ASSET_DIR", str(tmp_path / "elsewhere"))
    assert CardStore().get("in_default") is None  # as in fairseq2: the variable names the directory instead


@pytest.mark.slow
def test_init_random_reads_no_inherited_checkpoint(isolated_user_cards: Path) -> None:
    """A card that inherits a checkpoint through base: and says init: random starts from random weights;
    a card that sets its own checkpoint over an inherited init: random reads that checkpoint."""
    import torch

    from lmtune.models.loading import load_model

    (isolated_user_cards / "small.pt").write_bytes(b"not read")
    (isolated_user_cards / "m.yaml").write_text(
        "name: small_trained\nbase: tiny_llama\ncheckpoint: small.pt\nmodel_config:\n  model_dim: 64\n"
        "---\nname: big_random\nbase: small_trained\ninit: random\nmodel_config:\n  model_dim: 128\n"
    )
    store = CardStore()
    assert resolve_model(store, "small_trained", None).checkpoint == isolated_user_cards / "small.pt"
    spec = resolve_model(store, "big_random", None)
    assert spec.checkpoint is None
    # The same weights as the shipped random card of that architecture, for the same seed.
    expected = load_model(resolve_model(store, "tiny_llama", None), seed=3).state_dict()
    got = load_model(spec, seed=3).state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_yaml_syntax_error_names_file_and_line(isolated_user_cards: Path) -> None:
    bad = isolated_user_cards / "bad.yaml"
    bad.write_text("name: ok\nmodel_family: llama\n---\nname: broken\n  model_arch: [x\n")
    with pytest.raises(UserError, match=rf"{bad}:\d+: YAML syntax error"):
        CardStore()


def test_duplicate_plain_user_card_suggests_at_user(isolated_user_cards: Path) -> None:
    (isolated_user_cards / "d.yaml").write_text("name: llama3_2_1b\ncheckpoint: /x\n")
    with pytest.raises(UserError, match="llama3_2_1b@user"):
        CardStore()


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(UserError, match="llama3_2_1b"):
        resolve_model(CardStore(), "llama3_2_1", None)


def test_missing_checkpoint_file_is_named(isolated_user_cards: Path) -> None:
    (isolated_user_cards / "m.yaml").write_text("name: llama3_2_1b@user\ncheckpoint: /nowhere/consolidated.00.pth\n")
    with pytest.raises(UserError, match="/nowhere/consolidated.00.pth does not exist"):
        resolve_model(CardStore(), "llama3_2_1b", None)


def test_card_without_checkpoint_says_how_to_add_one() -> None:
    with pytest.raises(UserError, match="llama3_2_1b@user"):
        resolve_model(CardStore(), "llama3_2_1b", None)


def test_hub_address_is_refused(isolated_user_cards: Path) -> None:
    (isolated_user_cards / "h.yaml").write_text('name: llama3_2_1b@user\ncheckpoint: "hg://meta-llama/Llama-3.2-1B"\n')
    with pytest.raises(UserError, match="downloads nothing"):
        resolve_model(CardStore(), "llama3_2_1b", None)


def test_tiny_default_resolves() -> None:
    store = CardStore()
    model = resolve_model(store, "tiny_llama", None)
    assert model.checkpoint is None and model.tokenizer is not None
    assert model.tokenizer.hf_dir == assets_dir() / "tiny" / "tokenizer"
    data = resolve_dataset(store, "tiny_gsm8k")
    assert data.train.name == "train.jsonl" and data.test.name == "test.jsonl" and data.task == "gsm8k"
    assert resolve_tokenizer(store, "tiny_tokenizer").config == {"impl": "hg", "use_eot": True}


def test_dataset_paths_and_layouts(tmp_path: Path) -> None:
    store = CardStore()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat/train.jsonl").write_text('{"src": "a", "tgt": "b"}\n')
    (tmp_path / "flat/validation.jsonl").write_text('{"src": "a", "tgt": "b"}\n')
    spec = resolve_dataset(store, str(tmp_path / "flat"))
    assert spec.train == tmp_path / "flat/train.jsonl" and spec.valid == tmp_path / "flat/validation.jsonl"
    (tmp_path / "gsm/sft").mkdir(parents=True)
    (tmp_path / "gsm/test").mkdir()
    (tmp_path / "gsm/sft/train.jsonl").write_text("{}\n")
    (tmp_path / "gsm/test/test.jsonl").write_text("{}\n")
    spec = resolve_dataset(store, str(tmp_path / "gsm"))
    assert spec.train == tmp_path / "gsm/sft/train.jsonl" and spec.test == tmp_path / "gsm/test/test.jsonl"
    with pytest.raises(UserError, match="no such file"):
        resolve_dataset(store, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="tiny_gsm8k"):
        resolve_dataset(store, "tiny_gsm")


def test_shipped_cards_parse_and_every_file_is_packaged() -> None:
    files = sorted(p.name for p in assets_dir().glob("*.yaml"))
    assert files == ["datasets.yaml", "gpt2.yaml", "llama.yaml", "mistral.yaml", "olmo.yaml", "pretrain.yaml", "qwen.yaml", "smollm2.yaml", "tiny.yaml", "transformers.yaml"]


def test_dataset_labels_read_by_yaml_as_booleans_are_refused(isolated_user_cards: Path, tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text('{"src": "q", "tgt": "yes"}\n')
    (isolated_user_cards / "d.yaml").write_text(f"name: yes_no\ndata: {tmp_path}\ntest: test.jsonl\nlabels: [yes, no]\n")
    with pytest.raises(UserError, match=r"yes_no.*quote the labels"):
        resolve_dataset(CardStore(), "yes_no")
    (isolated_user_cards / "d.yaml").write_text(f"name: yes_no\ndata: {tmp_path}\ntest: test.jsonl\nlabels: ['yes', 'no']\n")
    assert resolve_dataset(CardStore(), "yes_no").labels == ["yes", "no"]


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "symlink"])
def test_one_directory_named_by_both_variables_is_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spelling: str) -> None:
    user = tmp_path / "cards"
    user.mkdir()
    (user / "mine.yaml").write_text("name: my_data\ndata: /nowhere\n---\nname: tiny_llama@user\nmodel_config:\n  num_layers: 1\n")
    other = {"same": str(user), "trailing_slash": f"{user}/", "symlink": str(tmp_path / "link")}[spelling]
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(user)
    monkeypatch.setenv("FAIRSEQ2_USER_ASSET_DIR", str(user))
    monkeypatch.setenv("LMTUNE_USER_ASSET_DIR", other)
    store = CardStore()
    assert store.get("my_data") is not None
    assert store.get("tiny_llama").get("model_config")["num_layers"] == 1  # the override applies once, no "already defined"
    assert store.get("tiny_llama").override_files == [user / "mine.yaml"]
