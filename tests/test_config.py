"""The flat config: file, --config overrides, dotted keys, types, suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.errors import UserError
from lmtune.options.finetune import FinetuneOptions
from lmtune.options.load import load_config


def test_tutorial_command_keys_parse() -> None:
    o = load_config(FinetuneOptions, None, "dataset=/d model=llama3_2_1b max_num_tokens=4096 dtype=float16 max_num_steps=1000 max_num_data_epochs=20 checkpoint_every_n_steps=1000".split())
    assert (o.dataset, o.model, o.max_num_tokens, o.dtype, o.max_num_steps, o.max_num_data_epochs) == ("/d", "llama3_2_1b", 4096, "float16", 1000, 20)


def test_overrides_win_over_file_and_dotted_keys_reach_sections(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: a\nlearning_rate: 1.0e-4\noptimizer:\n  weight_decay: 0.5\nlr_scheduler.num_warmup_steps: 7\n")
    o = load_config(FinetuneOptions, f, ["model=b", "optimizer.betas=[0.8, 0.9]", "learning_rate=2e-5"])
    assert o.model == "b"
    assert o.learning_rate == 2e-5  # YAML reads 2e-5 as a string; it still parses as a number
    assert o.optimizer.weight_decay == 0.5 and o.optimizer.betas == (0.8, 0.9)
    assert o.lr_scheduler.num_warmup_steps == 7


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(UserError, match="unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        load_config(FinetuneOptions, None, ["learning_rat=1"])
    with pytest.raises(UserError, match="'optimizer.weight_decy'; did you mean 'optimizer.weight_decay'"):
        load_config(FinetuneOptions, None, ["optimizer.weight_decy=1"])


@pytest.mark.parametrize("verb", ["instruction_finetune", "pretrain", "sweep"])
def test_unknown_key_with_no_close_name_points_at_the_verbs_help(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lmtune assets list` lists cards, not keys; the verb's --help lists its keys (sweep's are instruction_finetune's)."""
    from lmtune.cli import main

    grid = ["--grid", "seed=1,2"] if verb == "sweep" else []
    assert main([verb, str(tmp_path / "out"), *grid, "--config", "zzzz_qqqq=1"]) == 2
    lists_keys = "instruction_finetune" if verb == "sweep" else verb
    err = capsys.readouterr().err
    assert "unknown config key 'zzzz_qqqq'; " in err and f"are known (see `lmtune {lists_keys} --help`)." in err, err
    with pytest.raises(SystemExit):
        main([lists_keys, "--help"])
    assert "config keys (defaults):" in capsys.readouterr().out


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("max_sequence_len: 10\n")
    with pytest.raises(UserError, match=rf"{f}: unknown config key 'max_sequence_len'"):
        load_config(FinetuneOptions, f, [])


@pytest.mark.parametrize(
    "item, message",
    [
        ("max_num_steps=ten", "'max_num_steps' must be an integer or null, got 'ten'"),
        ("dtype=fp8", "'dtype' must be 'auto' or 'float32' or 'bfloat16' or 'float16', got 'fp8'"),
        ("learning_rate=fast", "'learning_rate' must be a number, got 'fast'"),
        ("compile=maybe", "'compile' must be true or false"),
        ("optimizer=1", "'optimizer' is a section"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_wrong_values_get_one_sentence(item: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(FinetuneOptions, None, [item])


def test_config_file_yaml_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: a\ndataset: [b\n")
    with pytest.raises(UserError, match=rf"{f}:\d+: YAML syntax error"):
        load_config(FinetuneOptions, f, [])


@pytest.mark.parametrize("command", ["instruction_finetune", "generate"])
def test_out_may_follow_the_config_items(command: str, tmp_path: Path) -> None:
    from lmtune.cli import build_parser
    from lmtune.commands.common import take_output_dir

    out = str(tmp_path / "out")
    for argv in ([command, out, "--config", "seed=3", "max_num_tokens=64"], [command, "--config", "seed=3", "max_num_tokens=64", out]):
        args = build_parser().parse_args(argv)
        take_output_dir(args)
        assert (args.output_dir, args.config) == (Path(out), ["seed=3", "max_num_tokens=64"])


def test_missing_out_is_one_sentence() -> None:
    from lmtune.cli import build_parser
    from lmtune.commands.common import take_output_dir

    args = build_parser().parse_args(["instruction_finetune", "--config", "seed=3"])
    with pytest.raises(UserError, match="OUT is missing: lmtune instruction_finetune OUT"):
        take_output_dir(args)
    args = build_parser().parse_args(["demo", "--config", "max_num_steps=5", "here"])
    take_output_dir(args)
    assert (args.output_dir, args.config) == (Path("here"), ["max_num_steps=5"])
    args = build_parser().parse_args(["demo"])
    take_output_dir(args)
    assert args.output_dir == Path("lmtune-demo")


def test_shared_keys_are_defined_once_and_each_recipe_keeps_its_defaults_and_order() -> None:
    import dataclasses

    from lmtune.options.keys import describe_keys
    from lmtune.options.load import to_dict
    from lmtune.options.pretrain import PretrainOptions
    from lmtune.options.training import TrainingOptions

    shared = {f.name for f in dataclasses.fields(TrainingOptions)}
    assert {"release_freed_memory", "export_hf", "optimizer", "wandb", "max_num_steps"} <= shared
    assert issubclass(FinetuneOptions, TrainingOptions) and issubclass(PretrainOptions, TrainingOptions)
    ft, pt = to_dict(FinetuneOptions()), to_dict(PretrainOptions())
    # Each recipe's own defaults where they differ; its own keys placed among the shared ones.
    assert (ft["max_seq_len"], ft["learning_rate"], ft["lr_scheduler"]["num_warmup_steps"]) == (2048, 5.5e-6, 0)
    assert (pt["max_seq_len"], pt["learning_rate"], pt["lr_scheduler"]["num_warmup_steps"]) == (1024, 6e-4, 100)
    ft_keys, pt_keys = list(ft), list(pt)
    assert ft_keys[ft_keys.index("batch_size") + 1 : ft_keys.index("batch_size") + 4] == ["packing", "data_cache", "max_num_steps"]
    assert pt_keys[:3] == ["model", "init", "tokenizer"]
    assert pt_keys[pt_keys.index("publish_metrics_every_n_steps") + 1] == "tokenizer_threads"
    assert ft_keys[-7:] == ["optimizer", "lr_scheduler", "wandb", "profiler", "early_stopping", "lora", "representations"]
    assert pt_keys[-4:] == ["optimizer", "lr_scheduler", "wandb", "profiler"]
    assert {"warmup_ratio", "grad_stats", "profiler"} <= shared
    # --help: a redefined key shows the recipe's default and help, an inherited one the shared help.
    help_pt = describe_keys(PretrainOptions)
    assert "  seed = 2  # Seeds the random initial weights." in help_pt.splitlines()
    assert "  init = 'checkpoint'  # checkpoint:" in help_pt
    assert "  keep_last_n_checkpoints = 1  # Checkpoints kept whole (model, optimizer, data position)." in help_pt.splitlines()
    assert "  seed = 2" in describe_keys(FinetuneOptions).splitlines()
