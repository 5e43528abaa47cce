"""A checkpoint -> a complete Hugging Face model directory that transformers loads and vLLM serves.

    step_N/model (fairseq2 tensors) --iter_checkpoint, mmap--> rename + rotary reorder + cast
        --> safetensors shards, one tensor at a time (hf_safetensors)
    model config --> config.json (hf_config);  tokenizer --> tokenizer files (hf_tokenizer)
    special tokens --> generation_config.json with every stop id

The directory is built as a hidden sibling and renamed into place only when it is
complete (and verified, with --verify): an interrupted or failed export leaves
nothing behind, and --force replaces an old export only once the new one is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lmtune.catalog.cards import Card, CardStore
from lmtune.catalog.specs import (
    CHECKPOINT_NAME,
    ModelSpec,
    TokenizerSpec,
    model_from_card,
    model_from_checkpoint_dir,
    resolve_model,
    resolve_tokenizer,
    tokenizer_from_card,
)
from lmtune.errors import UserError, did_you_mean
from lmtune.export.hf_config import (
    EXPORTABLE_FAMILIES,
    generation_config,
    head_dim,
    hf_config,
    qwen_architecture,
)
from lmtune.files import replace_dir
from lmtune.run_dir import (
    CHECKPOINTS,
    HF_EXPORT,
    checkpoint_steps,
    hf_export_dir,
    is_checkpoint_dir,
    is_unfinished_step,
    step_dir,
    step_of,
)

if TYPE_CHECKING:
    import torch
    from fairseq2.models.llama import LLaMAConfig
    from fairseq2.models.qwen import QwenConfig

DEFAULT_MAX_SHARD_SIZE = "5GB"


# ------------------------------------------------------------ what to export


def resolve_export(checkpoint: str, model: str | None = None, tokenizer: str | None = None) -> tuple[ModelSpec, TokenizerSpec, Path | None]:
    """CHECKPOINT (OUT, OUT/checkpoints, a step_N directory, a checkpoint path with --model, or a
    model card) -> the model, its tokenizer and the default output directory."""
    path = Path(checkpoint).expanduser()
    default_output: Path | None = None
    if is_unfinished_step(path):
        raise UserError(f"{path} is an unfinished checkpoint (fairseq2 writes step_N.tmp and renames it to step_N when complete); export a complete step_N or the run's checkpoints directory.")
    if path.exists():
        if is_checkpoint_dir(path / CHECKPOINTS):
            path = path / CHECKPOINTS  # the run's OUT
        step = step_of(path)
        if is_checkpoint_dir(path):
            spec = model_from_checkpoint_dir(path, None, "CHECKPOINT")
        elif step is not None and path.is_dir() and is_checkpoint_dir(path.parent):
            if not (path / "model").is_dir():
                raise UserError(f"{path} has no model/ directory; it is not a complete checkpoint.")
            spec = model_from_checkpoint_dir(path.parent, step, "CHECKPOINT")
        else:
            if model is None:
                raise UserError(f"{path} is not a training run's checkpoint directory (no model.yaml beside it); say what it holds with --model ARCH (e.g. llama3_2_1b) or a model card name.")
            spec = _spec_for_name(model, path)
            model = None
            default_output = (path if path.is_dir() else path.parent) / HF_EXPORT
        if spec.step is not None and spec.run_checkpoints is not None:
            default_output = hf_export_dir(spec.run_checkpoints, spec.step)
    elif CHECKPOINT_NAME.match(path.name) and (is_checkpoint_dir(path.parent) or is_checkpoint_dir(path.parent / CHECKPOINTS)):
        # OUT/best_checkpoint, OUT/checkpoints/last_checkpoint, ...: the names model= takes.
        run = path.parent if is_checkpoint_dir(path.parent) else path.parent / CHECKPOINTS
        spec = resolve_model(CardStore(), path.name, run, key="CHECKPOINT")
        default_output = hf_export_dir(run, spec.step)  # type: ignore[arg-type]
    elif "/" in checkpoint or checkpoint.startswith(".") or checkpoint.endswith((".pt", ".pth", ".safetensors")):
        raise UserError(f"{checkpoint}: no such file or directory.")
    else:
        spec = resolve_model(CardStore(), checkpoint, None)
        if spec.checkpoint is None:
            raise UserError(f"model card '{checkpoint}' has no checkpoint (it starts from random weights); export a trained one, e.g. OUT/checkpoints of an lmtune run.")
    if model is not None:
        _check_model_option(spec, model)
    _check_family(spec.family, spec.name)
    if spec.lora is not None:
        from lmtune.adapters.build import check_lora_base

        check_lora_base(spec)  # before anything is written

    if tokenizer is not None:
        tok = _tokenizer_for_name(tokenizer, spec.family)
    elif spec.tokenizer is not None:
        tok = spec.tokenizer
    else:
        tok = _tokenizer_beside(spec)
    if not tok.path.exists():
        raise UserError(f"tokenizer '{tok.name}': {tok.path} does not exist; pass --tokenizer with a tokenizer card, file or directory.")
    return spec, tok, default_output


def _check_family(family: str, name: str) -> None:
    if family not in EXPORTABLE_FAMILIES:
        raise UserError(f"model '{name}' is of family '{family}', which has no Hugging Face exporter in lmtune; it exports {', '.join(EXPORTABLE_FAMILIES)} models.")


def _arch_families() -> dict[str, str]:
    """Architecture name -> fairseq2 model family, over every family fairseq2 knows."""
    from fairseq2.models import ModelFamily

    from lmtune.models.loading import resolver

    out: dict[str, str] = {}
    keys = [str(k) for k in resolver().iter_keys(ModelFamily)]
    # Some names exist in several families (mistral's '7b' is also llama's): exportable ones win.
    for key in sorted(keys, key=lambda k: k not in EXPORTABLE_FAMILIES):
        family = resolver().resolve(ModelFamily, key=key)
        for arch in family.get_archs():
            out.setdefault(arch, key)
    return out


def _spec_for_name(name: str, checkpoint: Path) -> ModelSpec:
    """--model as a model card (its family, arch, config, tokenizer) or a bare architecture."""
    store = CardStore()
    card = store.get(name)
    if card is not None and isinstance(card.get("model_family"), str):
        return model_from_card(store, card, checkpoint)
    archs = _arch_families()
    if name not in archs:
        exportable = [a for a, f in archs.items() if f in EXPORTABLE_FAMILIES]
        cards = [n for n in store.names() if store.get(n).kind == "model"]  # type: ignore[union-attr]
        raise UserError(f"--model {name} is neither an architecture nor a model card; {did_you_mean(name, exportable + cards)}")
    return ModelSpec(name=name, family=archs[name], arch=name, config={}, checkpoint=checkpoint, source=str(checkpoint))


def _check_model_option(spec: ModelSpec, model: str) -> None:
    """For a run's checkpoint, --model only confirms the architecture: the run's model.yaml holds the full config."""
    archs = _arch_families()
    family = archs.get(model)
    if family is None:
        card = CardStore().get(model)
        family = str(card.get("model_family")) if card is not None and card.get("model_family") else None
        if family is None:
            exportable = [a for a, f in archs.items() if f == spec.family]
            raise UserError(f"--model {model} is not a known architecture; {did_you_mean(model, exportable)}")
    if family != spec.family:
        raise UserError(f"--model {model} is a {family} model but the checkpoint {spec.source} holds a {spec.family} model; drop --model or name a {spec.family} architecture.")
    if model in archs:
        spec.arch = model


def _tokenizer_for_name(name: str, family: str) -> TokenizerSpec:
    path = Path(name).expanduser()
    if path.exists():
        return tokenizer_from_card(Card(name=path.name, fields={"tokenizer": str(path.resolve()), "tokenizer_family": family}, file=path))
    if "/" in name:
        raise UserError(f"--tokenizer {name}: no such file or directory.")
    return resolve_tokenizer(CardStore(), name)


def _tokenizer_beside(spec: ModelSpec) -> TokenizerSpec:
    where = spec.checkpoint if spec.checkpoint is not None and spec.checkpoint.is_dir() else (spec.checkpoint.parent if spec.checkpoint else None)
    if where is not None:
        for candidate in (where / "tokenizer.json", where / "tokenizer.model", where / "original" / "tokenizer.model"):
            if candidate.is_file():
                return _tokenizer_for_name(str(candidate), spec.family)
    raise UserError(f"no tokenizer is known for model '{spec.name}'; pass --tokenizer with a tokenizer card, file or directory.")


# ---------------------------------------------------------------- the export


def export_hf(
    spec: ModelSpec,
    tokenizer: TokenizerSpec,
    output: Path,
    *,
    dtype: str | None = None,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
    verify: bool = False,
    force: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    lora_weights: str = "merged",
) -> Path:
    """Writes the directory beside ``output`` and renames it into place; returns ``output``.
    For a LoRA checkpoint, ``lora_weights`` is "merged" (W + B @ A * scale) or "base" (the frozen
    base alone, as the run used it: an NF4 base dequantized)."""
    from lmtune.dtypes import DTYPES
    from lmtune.export.safetensors_shards import parse_size

    _check_family(spec.family, spec.name)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not a dtype the export can write; valid: {', '.join(DTYPES)}.")
    max_bytes = parse_size(max_shard_size)
    output = output.expanduser().absolute()
    if output.exists() or output.is_symlink():
        if not force:
            raise UserError(f"{output} already exists; pass --force to replace it, or choose another --output.")
        if not output.is_dir():
            raise UserError(f"{output} exists and is not a directory; remove it or choose another --output.")

    if spec.family == "transformers":
        from lmtune.export.transformers_export import export_transformers_hf

        return export_transformers_hf(spec, tokenizer, output, dtype=dtype, log=log, lora_weights=lora_weights)
    from lmtune.models.loading import model_config

    config = cast("LLaMAConfig | QwenConfig", model_config(spec))  # llama and qwen; gpt2 (Gpt2Config) has the fields export reads too
    if spec.family == "qwen":
        qwen_architecture(cast("QwenConfig", config))  # refuse a Qwen variant with no HF class before writing anything

    start = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        import transformers

        from lmtune.export.tokenizer import write_hf_tokenizer

        ids = write_hf_tokenizer(tokenizer, staging, config.max_seq_len)
        top = max(i for i in (ids.bos, ids.eos, ids.pad, *ids.stops) if i is not None)
        if top >= config.vocab_size:
            raise UserError(f"tokenizer '{tokenizer.name}' uses token id {top} but model '{spec.name}' has vocab_size={config.vocab_size}; export it with the tokenizer it was trained with.")
        torch_dtype, files, nbytes = _write_weights(spec, config, staging, dtype, max_bytes, lora_weights)
        version = transformers.__version__
        if spec.family == "gpt2":
            from lmtune.models.gpt2_hf import hf_config as gpt2_hf_config

            hf = gpt2_hf_config(config, bos=ids.bos, eos=ids.eos, dtype=torch_dtype, transformers_version=version)  # type: ignore[arg-type]
        else:
            hf = hf_config(spec.family, config, ids, torch_dtype, version)
        if spec.hf_export is not None:
            from lmtune.export.mistral_config import mistral_hf_config

            hf = mistral_hf_config(hf, spec.hf_export)
        _write_json(staging / "config.json", hf)
        _write_json(staging / "generation_config.json", generation_config(ids, version))
        log(f"lmtune: wrote {len(files)} safetensors file(s), {nbytes / 1e6:.1f} MB of {torch_dtype} weights, in {time.monotonic() - start:.1f} s")
        if verify and lora_weights == "base":
            log("lmtune: --verify compares a model with lmtune's; the base of a LoRA checkpoint is checked through its adapter instead")
        elif verify:
            from lmtune.export.verify import verify_export

            log(verify_export(spec, staging, torch_dtype))
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"lmtune: exported {spec.name} to {output}")
    return output


def _remove_stale_staging(output: Path) -> None:
    """Removes what an export killed outright (SIGKILL, power loss) left beside ``output``."""
    for path in output.parent.glob(f".{output.name}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _hf_tensors(family: str, config: LLaMAConfig | QwenConfig) -> Callable[[Iterable[tuple[str, torch.Tensor]]], Iterator[tuple[str, torch.Tensor]]]:
    """fairseq2 (name, tensor) pairs -> the Hugging Face ones, for ``family``."""
    from lmtune.models.hf_keys import hf_name, is_lm_head, to_hf_tensor

    if family == "gpt2":
        from lmtune.models.gpt2_hf import hf_tensors

        return hf_tensors  # fuses q/k/v into c_attn, transposes the Conv1D weights
    tied = bool(config.tied_embeddings)
    hdim = head_dim(family, config)

    def key_table_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named:
            if not (tied and is_lm_head(name)):  # a tied head is the embeddings; HF ties it from tie_word_embeddings
                yield hf_name(name, family), to_hf_tensor(name, tensor, family, config, hdim)

    return key_table_tensors


def _write_weights(spec: ModelSpec, config: LLaMAConfig | QwenConfig, out_dir: Path, dtype: str | None, max_bytes: int, lora_weights: str = "merged") -> tuple[str, list[str], int]:
    """Streams the checkpoint's tensors into safetensors shards; returns (dtype name, files, bytes).
    A LoRA checkpoint's model is built in memory (base + adapters) and its weights merged first."""
    import torch
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.model_checkpoint import CorruptModelCheckpointError

    from lmtune.dtypes import torch_dtype
    from lmtune.export.safetensors_shards import (
        SAFETENSORS_DTYPES,
        ShardedSafetensorsWriter,
    )
    from lmtune.models.hf_keys import cast
    from lmtune.models.loading import model_family

    family = model_family(spec.family)
    gangs = create_fake_gangs(CPU)
    to_hf = _hf_tensors(spec.family, config)
    # Names and shapes from a meta-device model: the shard plan before any tensor is read.
    meta = family.create_new_model(config, gangs, torch.float32, True, False)
    planned = [(name, tuple(t.shape)) for name, t in to_hf(meta.state_dict().items())]
    del meta
    try:
        if spec.lora is not None:
            from lmtune.adapters.build import load_any_model
            from lmtune.adapters.lora import merged_tensors

            tensors = iter(merged_tensors(load_any_model(spec), merge=lora_weights == "merged"))
        else:
            tensors = family.iter_checkpoint(Path(spec.checkpoint), config, gangs, mmap=True, restrict=None)  # type: ignore[arg-type]
        first = next(tensors, None)
        if first is None:
            raise UserError(f"the checkpoint {spec.checkpoint} holds no tensors.")
        target = torch_dtype(dtype) if dtype is not None else first[1].dtype
        if target not in SAFETENSORS_DTYPES:
            raise UserError(f"the checkpoint's weights are {first[1].dtype}; pass --dtype float32, bfloat16 or float16.")
        writer = ShardedSafetensorsWriter(out_dir, planned, target, max_bytes)
        try:
            for hf, tensor in to_hf(chain([first], tensors)):
                writer.write(hf, cast(hf, tensor, target))
                del tensor
        finally:
            writer.close()
        files = writer.finish()
    except (CorruptModelCheckpointError, OSError, RuntimeError) as ex:
        first_line = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise UserError(f"cannot read the checkpoint at {spec.checkpoint}: {first_line}") from None
    return str(target).removeprefix("torch."), files, writer.total_bytes


# ------------------------------------------------------------ run integration


def export_run_checkpoints(checkpoint_dir: Path, which: str, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[Path]:
    """After training: export the last (``which='last'``) or every kept (``'all'``) checkpoint to
    step_N/hf, skipping those already exported (a resumed or repeated run)."""
    steps = checkpoint_steps(checkpoint_dir)
    chosen = steps[-1:] if which == "last" else steps
    written = []
    for step in chosen:
        output = hf_export_dir(checkpoint_dir, step)
        if output.exists():
            continue
        spec, tok, _ = resolve_export(str(step_dir(checkpoint_dir, step)))
        written.append(export_hf(spec, tok, output, log=log))
    return written
