"""A LoRA run's base read tensor by tensor into an empty model (lmtune.adapters.base_weights).

The reference is the plain path: the whole base loaded by fairseq2, then the adapters added
(and the projections quantized) on the loaded model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmtune.adapters.base_weights import (
    drop_file_pages,
    load_base_weights,
    mapped_files,
)
from lmtune.adapters.build import load_any_model
from lmtune.adapters.lora import TARGET_MODULES, LoraLinear, apply_lora
from lmtune.catalog.specs import ModelSpec
from lmtune.errors import UserError
from lmtune.models.loading import iter_model_tensors, model_config, model_family
from lmtune.options.lora import LoraSettings
from tiny_builders import (
    TinyModel,
    tiny_llama,
    tiny_qwen25,
    write_hf_dir,
    write_meta_reference,
)

SEED = 3


def settings(quantize: str) -> LoraSettings:
    return LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=list(TARGET_MODULES), quantize=quantize)  # type: ignore[arg-type]


def spec_of(tiny: TinyModel, checkpoint: Path, **config: object) -> ModelSpec:
    from lmtune.catalog.cards import CardStore

    arch = str(CardStore().get(tiny.base_card).get("model_arch"))  # type: ignore[union-attr]
    return ModelSpec(name="tiny", family=tiny.family, arch=arch, config={**tiny.overrides, **config}, checkpoint=checkpoint, source="test")


def streamed(spec: ModelSpec, quantize: str) -> torch.nn.Module:
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs

    model = model_family(spec.family).create_new_model(model_config(spec), create_fake_gangs(CPU), torch.float32, meta=True, init_rank0_only=False)
    apply_lora(model, settings(quantize), seed=SEED, device=CPU)
    load_base_weights(model, spec, iter_model_tensors(spec), device=CPU, dtype=torch.float32)
    return model.eval()


def loaded_whole(spec: ModelSpec, quantize: str) -> torch.nn.Module:
    model = load_any_model(spec)
    apply_lora(model, settings(quantize), seed=SEED)
    return model.eval()


def frozen_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: t for n, t in model.named_parameters(remove_duplicate=False)}
    out.update(model.named_buffers(remove_duplicate=False))
    for name, m in model.named_modules():
        if isinstance(m, LoraLinear) and m.quantized:
            out[name + ".nf4"] = m.base_weight()
    return out


@pytest.mark.parametrize("quantize", ["none", "nf4"])
@pytest.mark.parametrize("kind", ["llama_hf", "llama_tied_meta", "qwen25_hf_bf16"])
def test_streamed_base_is_the_whole_loaded_base(tmp_path: Path, kind: str, quantize: str) -> None:
    if kind == "llama_hf":
        tiny = tiny_llama()
        checkpoint = write_hf_dir(tiny, tmp_path / "hf", num_shards=2)  # fairseq2's HF converter, q/k rotary permutation
    elif kind == "llama_tied_meta":
        tiny = tiny_llama(tied=True)
        checkpoint = write_meta_reference(tiny, tmp_path / "meta")
    else:
        tiny = tiny_qwen25()  # q/k/v biases, tied head
        checkpoint = write_hf_dir(tiny, tmp_path / "hf", dtype=torch.bfloat16)
    spec = spec_of(tiny, checkpoint)
    a, b = streamed(spec, quantize), loaded_whole(spec, quantize)

    ta, tb = frozen_tensors(a), frozen_tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert not ta[name].is_meta, name
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name
    if tiny.config.tied_embeddings:  # type: ignore[attr-defined]
        assert a.final_proj.weight is a.decoder_frontend.embed.weight  # still one tensor
    if quantize == "nf4":
        assert all(m.weight is None and m.nf4_weight is not None for _, m in a.named_modules() if isinstance(m, LoraLinear))
    from fairseq2.nn import BatchLayout

    seqs = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(seqs, BatchLayout.of(seqs)), b(seqs, BatchLayout.of(seqs)))


def test_a_checkpoint_of_another_shape_is_one_sentence(tmp_path: Path) -> None:
    tiny = tiny_llama()
    checkpoint = write_hf_dir(tiny, tmp_path / "hf")
    with pytest.raises(UserError, match=r"'decoder.layers.0.ffn.[a-z_]+.weight' in checkpoint .* has shape \(\d+, \d+\), the model's is \(\d+, \d+\); is model_config right\?") as e:
        streamed(spec_of(tiny, checkpoint, ffn_inner_dim=96, ffn_inner_dim_multiple_of=1), "none")
    assert "\n" not in str(e.value)


def test_dropped_file_pages_leave_the_tensors_intact(tmp_path: Path) -> None:
    """The checkpoint's pages leave the process's memory; what is read again comes from the file."""
    file = tmp_path / "w.pt"
    torch.save({"w": torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))}, file)
    w = torch.load(file, mmap=True, weights_only=True)["w"]
    expected = float(w.double().sum())  # reads every page

    def resident_kb() -> int:
        total, current = 0, False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            if "-" in line.split(maxsplit=1)[0] and len(line.split()) >= 5:
                current = line.rstrip().endswith(str(file))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total

    assert resident_kb() >= 4096  # 4 MiB of float32 read through the mapping
    drop_file_pages(mapped_files(tmp_path))
    assert resident_kb() == 0
    assert float(w.double().sum()) == expected
