"""What lmtune does with each model family: the table ``lmtune assets list --kind model`` prints
and the README's model section repeats.

"yes" means a test proves it against a reference (transformers, PEFT, vLLM, an uninterrupted run);
"untested" means no test here tries it; "per-arch": a probe decides per architecture (the transformers family's
packing: ``lmtune.models.transformers_family.packs_examples_apart``). The transformers family's SFT, LoRA, export
and generation go through the CLI (tests/test_transformers_family_cli.py, tests/test_transformers_family_lora.py),
its export through vLLM (tests/test_vllm_families.py), all on GPT-NeoX. Mistral is built as fairseq2's llama
family and exported as MistralForCausalLM.
OLMo 2 and OLMo 3 are both fairseq2's olmo family (OLMo 3: sliding-window layers, YaRN), exported as Olmo2/Olmo3ForCausalLM.
"""

from __future__ import annotations

FEATURES = ("SFT", "LoRA", "QLoRA", "packing", "HF export", "vLLM")

# family as users name it -> (lmtune model_family, one value per FEATURES)
SUPPORT: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama":   ("llama", ("yes", "yes", "yes",  "yes", "yes", "yes")),
    "qwen":    ("qwen",  ("yes", "yes", "yes",  "yes", "yes", "yes")),
    "olmo2":   ("olmo",  ("yes", "yes", "yes",  "yes", "yes", "yes")),
    "olmo3":   ("olmo",  ("yes", "yes", "yes",  "yes", "yes", "no")),  # vLLM 0.32 (CPU) parts from transformers: README
    "mistral": ("llama", ("yes", "yes", "yes",  "yes", "yes", "yes")),
    "gpt2":    ("gpt2",  ("yes", "yes", "yes",  "yes", "yes", "yes")),
    # Any other causal LM transformers builds from a local directory (tested: GPT-NeoX).
    "transformers": ("transformers", ("yes", "yes", "no", "per-arch", "yes", "yes")),
}  # fmt: skip


def family_label(fields: dict[str, object]) -> str:
    """The family a model card is, as the table names it (a Mistral card is llama-built)."""
    hf_export = fields.get("hf_export")
    if isinstance(hf_export, dict) and hf_export.get("model_type") == "mistral":
        return "mistral"
    family = str(fields.get("model_family") or "?")
    if family == "olmo":
        config = fields.get("model_config")
        olmo3 = isinstance(config, dict) and (config.get("sliding_window") is not None or config.get("yarn_scale_config") is not None)
        return "olmo3" if olmo3 or str(fields.get("model_arch") or "").startswith("olmo3") else "olmo2"
    return family


def support_table() -> str:
    header = (f"{'family':12} " + " ".join(f"{f:9}" for f in FEATURES)).rstrip()
    rows = [(f"{name:12} " + " ".join(f"{v:9}" for v in values)).rstrip() for name, (_, values) in SUPPORT.items()]
    return "\n".join([header, *rows])
