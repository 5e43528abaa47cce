"""``config.json`` of a Mistral export (``MistralForCausalLM``).

lmtune builds a Hugging Face Mistral model as fairseq2's llama family (fairseq2's own mistral
family has no rope theta, so it cannot build Mistral 7B v0.2/v0.3, and reads no HF weights):
the architecture is Llama's, plus a sliding attention window that lmtune keeps out of reach by
refusing longer sequences. The export says Mistral again, window included, so that transformers
and vLLM run the model its users know, and a later fine-tune elsewhere keeps the window.
"""

from __future__ import annotations

from lmtune.errors import UserError

# Llama keys MistralConfig does not have.
LLAMA_ONLY_KEYS = ("rope_scaling", "attention_bias", "mlp_bias", "pretraining_tp")


def mistral_hf_config(llama: dict[str, object], hf_export: dict[str, object]) -> dict[str, object]:
    """The Llama ``config.json`` lmtune would write (``hf_config``), as Mistral's."""
    if hf_export.get("model_type") != "mistral":
        raise UserError(f"hf_export {hf_export} names a model_type lmtune does not export as; it exports llama-built models as 'mistral' only.")
    if llama.get("rope_scaling") is not None:
        raise UserError("a model with Llama 3 rope scaling cannot be exported as MistralForCausalLM, which has none; drop hf_export from its card to export it as Llama.")
    out = {k: v for k, v in llama.items() if k not in LLAMA_ONLY_KEYS}
    out["architectures"] = ["MistralForCausalLM"]
    out["model_type"] = "mistral"
    out["sliding_window"] = hf_export.get("sliding_window")
    return out
