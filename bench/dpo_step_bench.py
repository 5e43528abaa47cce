"""Where a DPO step's time goes: lmtune's DPO step, its SFT step on the same tokens, and a TRL-like step.

    .venv/bin/python bench/dpo_step_bench.py [--rounds 3] [--threads 2] [--profile]

bench/dpo_bench.py times whole runs one after another, so on a shared machine each contender sees a
different load. This bench times single training steps of one process, in turns (round robin over
the contenders, three batches a turn), and reports CPU time (``time.process_time``) beside wall time:
the steadier figure when other jobs share the CPU. Same model and pairs as bench/dpo_bench.py (a
4-layer, 512-wide Llama with a 32,768-entry tied vocabulary; 4 pairs of about 550 tokens a batch),
float32 unless named, AdamW, every step forward, backward and optimizer step:

- ``lmtune_dpo``: lmtune's DPO step (``lmtune.preference.packing.pair_logps`` on the packed pairs,
  per-document attention, the LM head on response positions only, the sigmoid loss);
- ``lmtune_sft``: lmtune's SFT step on the same packed sequences (``lmtune.models.target_loss``: the
  head on the same response positions, one summed NLL): what DPO costs beyond SFT;
- ``lmtune_dpo_bf16``: the DPO step under bf16 autocast, what ``dtype=auto`` runs on a CPU with
  AVX512-BF16 or AMX for a model this wide (lmtune.precision);
- ``hf_padded``: transformers' model on the same pairs padded to the longest (TRL's DPOTrainer's
  batches: every position projected to the vocabulary, log-softmax, the response tokens gathered).

``--profile`` adds ``torch.profiler``'s top operators of one step of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from dpo_bench import write_pairs
    from fairseq2.models.transformer import set_default_sdpa_factory
    from lora_bench import build_run
    from preference_memory_bench import MODEL
    from transformers import AutoModelForCausalLM

    from lmtune.catalog.cards import CardStore
    from lmtune.catalog.specs import resolve_model
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.models.document_attention import DocumentSDPA
    from lmtune.models.loading import load_model, load_tokenizer
    from lmtune.models.row_logps import use_row_logps
    from lmtune.models.swiglu import use_lean_swiglu
    from lmtune.models.target_loss import use_target_only_loss
    from lmtune.preference.losses import SequenceLogps, dpo_loss
    from lmtune.preference.packing import collate_pairs, pair_logps
    from lmtune.preference.pairs import encode_pair_file

    with tempfile.TemporaryDirectory(prefix="dpo_step_bench_") as tmp:
        root = Path(tmp)
        build_run(root / "base", "smoke", MODEL)
        write_pairs(root / "pairs/train.jsonl", 12)
        spec = resolve_model(CardStore(), "last_checkpoint", root / "base/checkpoints")
        assert spec.tokenizer is not None
        pairs = encode_pair_file(ExampleEncoder(load_tokenizer(spec.tokenizer), spec.tokenizer.hf_dir), root / "pairs/train.jsonl")
        set_default_sdpa_factory(DocumentSDPA)  # as the recipes do before the model is built

        def lmtune_model(install):  # type: ignore[no-untyped-def]
            model = load_model(spec, dtype=torch.float32).train()
            use_lean_swiglu(model)
            install(model)
            return model, torch.optim.AdamW(model.parameters(), lr=1e-6)

        dpo_model, dpo_opt = lmtune_model(use_row_logps)
        sft_model, sft_opt = lmtune_model(use_target_only_loss)
        hf = AutoModelForCausalLM.from_pretrained(root / "base/checkpoints/step_1/hf", dtype=torch.float32).train()
        hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-6)
        batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]

        def lmtune_dpo(ids: list[int]) -> None:
            policy = pair_logps(dpo_model, collate_pairs(pairs, ids))
            ref = SequenceLogps(chosen=policy.chosen.detach() - 1.0, rejected=policy.rejected.detach(), chosen_tokens=policy.chosen_tokens, rejected_tokens=policy.rejected_tokens)
            dpo_loss(policy, ref).loss.backward()
            dpo_opt.step()
            dpo_opt.zero_grad()

        def lmtune_dpo_bf16(ids: list[int]) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lmtune_dpo(ids)

        def lmtune_sft(ids: list[int]) -> None:
            batch = collate_pairs(pairs, ids).batch
            seqs, targets = batch.as_auto_regressive()  # type: ignore[attr-defined]
            seqs, layout = seqs.as_input()
            sft_model(seqs, layout, targets=targets.seqs, target_mask=targets.target_mask, reduction="sum").backward()
            sft_opt.step()
            sft_opt.zero_grad()

        def hf_padded(ids: list[int]) -> None:
            items = [pairs.examples.item(2 * p + half) for p in ids for half in (0, 1)]
            width = max(len(x["tokens"]) for x in items)
            tokens = torch.zeros(len(items), width, dtype=torch.long)
            mask = torch.zeros(len(items), width, dtype=torch.long)
            loss_mask = torch.zeros(len(items), width, dtype=torch.bool)
            for i, x in enumerate(items):
                n = len(x["tokens"])
                tokens[i, :n], mask[i, :n], loss_mask[i, :n] = x["tokens"], 1, x["target_mask"]
            logits = hf(input_ids=tokens, attention_mask=mask).logits[:, :-1]
            logps = torch.log_softmax(logits.float(), -1).gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)
            sums = (logps * loss_mask[:, 1:]).sum(1)
            (-torch.nn.functional.logsigmoid(0.1 * ((sums[0::2] - sums[1::2]) - 1.0))).sum().backward()
            hf_opt.step()
            hf_opt.zero_grad()

        contenders = {"lmtune_dpo": lmtune_dpo, "lmtune_sft": lmtune_sft, "lmtune_dpo_bf16": lmtune_dpo_bf16, "hf_padded": hf_padded}
        for step in contenders.values():
            step(batches[0])  # first steps: allocation, AdamW's state
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, step in contenders.items():
                for ids in batches:
                    wall, cpu = time.perf_counter(), time.process_time()
                    step(ids)
                    times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        tokens = sum(int(pairs.examples.lengths[2 * p] + pairs.examples.lengths[2 * p + 1]) for ids in batches for p in ids) / len(batches)
        print(f"dpo_step_bench: {len(batches)} batches of 4 pairs, {tokens:.0f} tokens a batch, {args.rounds} rounds, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
        print("| step | steps | CPU s/step best / median | wall s/step best / median | CPU time vs lmtune_dpo (median) |")
        print("|---|---|---|---|---|")
        median = {name: sorted(c for _, c in v)[len(v) // 2] for name, v in times.items()}
        for name, v in times.items():
            cpu, wall = sorted(c for _, c in v), sorted(w for w, _ in v)
            print(f"| {name} | {len(v)} | {cpu[0]:.2f} / {median[name]:.2f} | {wall[0]:.2f} / {wall[len(wall) // 2]:.2f} | {median[name] / median['lmtune_dpo']:.2f}x |")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            for name, step in contenders.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step(batches[1])
                print(f"\n{name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
