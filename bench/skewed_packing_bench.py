"""Packing vs length batching on skewed-length data, the tiny model, in one process, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/skewed_packing_bench.py [--examples 800] [--repeats 3] [--profile]
        [--scale tiny|full] [--model-dim 96] [--layers 2] [--only length,packed,packed_loop,packed_grouped]
        [--dtype float32|bfloat16]  # bfloat16: autocast over float32 weights, as dtype=auto/bfloat16 trains
        [--encoded ~/.cache/lmtune/encoded/train-HASH --max-seq-len 128 --max-num-tokens 2048]  # the demo's batches

One epoch over the same synthetic examples (random token ids; prompt and response lengths lognormal
with medians ~45 and ~75 tokens and a long tail, capped at max_seq_len 512, as bench/packing_bench.py
draws them), tiny_llama (2 layers, 128 dims, random init from one seed; --scale full: bench/packing_bench.py's
25M-weight shape, 512 dims, 8 layers; --model-dim / --layers override), AdamW, float32 or bf16 autocast, CPU:

  length          packing=false: lmtune's length batching (max_num_tokens 4096 padded tokens per batch)
  packed          packing=true with lmtune's DocumentSDPA (one causal flash-kernel call per example, the loop
                  inside one autograd function: PackedCausalAttention)
  packed_loop     packing=true with DocumentSDPA's plain loop (SDPA per example, recorded by autograd op by op;
                  the default before PackedCausalAttention; the same bits)
  packed_grouped  packing=true with a variant tried against the per-call overhead, inline below and
                  not adopted: examples of similar length share one call, right-padded (checked to give
                  the same loss as `packed` before timing)

Batches come from lmtune.data.batching.build_pipeline, steps from lmtune.training.nll_unit.target_nll.
The contenders run in turns (A B C A B C ...), so a shared machine's load falls on all alike; the best
and the median of --repeats epochs are printed. --profile prints cProfile's top functions for one
epoch of each packed contender. The "loss" of a packed batch is checked equal across the two attentions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import scaled_dot_product_attention

REPO = Path(__file__).resolve().parent.parent


def skewed_examples(n: int, seed: int, max_seq_len: int):  # type: ignore[no-untyped-def]
    from lmtune.data.encoding import Example

    sys.path.insert(0, str(REPO / "bench"))
    from sft_workload import skewed_lengths

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        prompt, response = skewed_lengths(rng, max_seq_len)
        tokens = [0] + [rng.randint(6, 470) for _ in range(prompt + response)] + [1]
        examples.append(Example(tokens=tokens, target_mask=[False] * (prompt + 1) + [True] * (response + 1)))
    return examples


PADDED_SHARE = 0.25


def length_groups(lens: list[int]) -> list[list[int]]:
    """Examples grouped longest first, a group cut where padding would add > PADDED_SHARE of its L^2 work."""
    order = sorted(range(len(lens)), key=lambda i: (-lens[i], i))
    groups: list[list[int]] = []
    work = 0
    for i in order:
        n = lens[i]
        if groups and (len(groups[-1]) + 1) * lens[groups[-1][0]] ** 2 <= (1 + PADDED_SHARE) * (work + n * n):
            groups[-1].append(i)
            work += n * n
            continue
        groups.append([i])
        work = n * n
    return groups


@lru_cache(maxsize=4)
def padded_plan(lens: tuple[int, ...]):  # type: ignore[no-untyped-def]
    starts = np.concatenate([[0], np.cumsum(lens[:-1])]).astype(np.int64)
    gather, scatter, groups, row = [], np.empty(sum(lens), dtype=np.int64), [], 0
    for group in length_groups(list(lens)):
        longest = lens[group[0]]
        steps = np.arange(longest)
        for i in group:
            gather.append(starts[i] + np.minimum(steps, lens[i] - 1))  # padding repeats the last token
            scatter[starts[i] : starts[i] + lens[i]] = row + steps[: lens[i]]
            row += longest
        groups.append((row - len(group) * longest, len(group) * longest, longest))
    return torch.from_numpy(np.concatenate(gather)), torch.from_numpy(scatter), groups


def grouped_forward(self, q, q_layout, k, k_layout, v, bias_cache, *, needs_weights=False):  # type: ignore[no-untyped-def]
    """The variant tried and not adopted: examples of similar length share one causal SDPA call,
    right-padded to the longest of the group (a real query never sees the padding after it)."""
    if needs_weights or not self._handles(q_layout, k_layout):
        return self.unpacked(q, q_layout, k, k_layout, v, bias_cache, needs_weights=needs_weights)
    dropout_p = self.dropout_p if self.training else 0.0
    gather, scatter, groups = padded_plan(tuple(int(n) for n in q_layout.seq_lens))
    qa, ka, va = (x.index_select(0, gather) for x in (q, k, v))
    outputs = []
    for start, size, length in groups:
        qg, kg, vg = (x[start : start + size].unflatten(0, (-1, length)).transpose(1, 2) for x in (qa, ka, va))
        out = scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout_p, is_causal=True, scale=self.scale)
        outputs.append(out.transpose(1, 2).flatten(0, 1))
    return torch.cat(outputs).index_select(0, scatter), None


PER_EXAMPLE = None  # DocumentSDPA.forward as lmtune has it, set in main()


def loop_forward(self, q, q_layout, k, k_layout, v, bias_cache, *, needs_weights=False):  # type: ignore[no-untyped-def]
    """DocumentSDPA with its plain per-example loop (PackedCausalAttention off)."""
    from lmtune.models import document_attention

    applies = document_attention._fused_cpu_kernel_applies
    document_attention._fused_cpu_kernel_applies = lambda *args: False  # type: ignore[assignment]
    try:
        return PER_EXAMPLE(self, q, q_layout, k, k_layout, v, bias_cache, needs_weights=needs_weights)  # type: ignore[misc]
    finally:
        document_attention._fused_cpu_kernel_applies = applies


def tiny_model(shape: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    from fairseq2.models.transformer import set_default_sdpa_factory

    from lmtune.catalog.cards import CardStore
    from lmtune.adapters.build import load_any_model
    from lmtune.catalog.specs import resolve_model
    from lmtune.models.document_attention import DocumentSDPA

    set_default_sdpa_factory(DocumentSDPA)  # as instruction_finetune does; unpacked batches go to TorchSDPA
    torch.manual_seed(0)
    spec = resolve_model(CardStore(), "tiny_llama", None)
    spec.config.update(shape or {})
    model = load_any_model(spec)
    model.train()
    return model


AUTOCAST: torch.dtype | None = None  # --dtype bfloat16: the forward under CPU autocast, as fairseq2's trainer runs it


def epoch(model, optimizer, batches) -> float:  # type: ignore[no-untyped-def]
    from lmtune.training.nll_unit import target_nll

    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=AUTOCAST or torch.bfloat16, enabled=AUTOCAST is not None):
            loss, targets = target_nll(model, batch)
        (loss / targets.num_target_elements).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--max-num-tokens", type=int, default=4096)
    parser.add_argument("--encoded", type=Path, help="an encoded data directory of the cache (e.g. the demo's train split) instead of synthetic examples; --examples caps it")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--scale", choices=["tiny", "full"], default="tiny", help="tiny_llama, or packing_bench.py's 25M-weight shape")
    parser.add_argument("--model-dim", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--only", default="length,packed,packed_loop,packed_grouped")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    global AUTOCAST
    AUTOCAST = torch.bfloat16 if args.dtype == "bfloat16" else None
    shape: dict[str, int] = {}
    if args.scale == "full":
        sys.path.insert(0, str(REPO / "bench"))
        from packing_bench import SCALES

        shape.update(SCALES["full"])
    if args.model_dim:
        shape["model_dim"] = args.model_dim
    if args.layers:
        shape["num_layers"] = args.layers

    from lmtune.data.batching import build_pipeline
    from lmtune.models.document_attention import DocumentSDPA

    if args.encoded:
        from lmtune.data.encoded_examples import EncodedExamples

        examples = EncodedExamples.load(args.encoded)
        indices = np.arange(min(args.examples, len(examples)))
        tokens = int(examples.lengths[indices].sum())
    else:
        examples = skewed_examples(args.examples, 0, args.max_seq_len)
        indices = np.arange(len(examples))
        tokens = sum(len(e.tokens) for e in examples)
    common = dict(indices=indices, dp_rank=0, dp_size=1, max_seq_len=args.max_seq_len, max_num_tokens=args.max_num_tokens, batch_size=None, pad_idx=0, shuffle_seed=3)
    batches = {
        "length": list(build_pipeline(examples, packing=False, **common)),  # type: ignore[arg-type]
        "packed": list(build_pipeline(examples, packing=True, **common)),  # type: ignore[arg-type]
    }
    global PER_EXAMPLE
    per_example = PER_EXAMPLE = DocumentSDPA.forward
    everyone = {
        "length": ("length", per_example),
        "packed": ("packed", per_example),
        "packed_loop": ("packed", loop_forward),
        "packed_grouped": ("packed", grouped_forward),
    }
    contenders = {name: everyone[name] for name in args.only.split(",")}
    model = tiny_model(shape)
    from lmtune.training.nll_unit import target_nll

    losses = []
    for forward in (per_example, loop_forward, grouped_forward):
        DocumentSDPA.forward = forward  # type: ignore[method-assign]
        losses.append(target_nll(model, batches["packed"][0])[0])
        losses.append(torch.autograd.grad(losses[-1], list(model.parameters())))
    DocumentSDPA.forward = per_example  # type: ignore[method-assign]
    assert torch.equal(losses[0], losses[2]) and all(map(torch.equal, losses[1], losses[3])), "PackedCausalAttention differs from the loop"
    torch.testing.assert_close(losses[4], losses[0], rtol=1e-5, atol=1e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_times: dict[str, list[float]] = {name: [] for name in contenders}  # steadier than wall time on a shared machine (1 thread)
    profiles: dict[str, str] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, (kind, forward) in contenders.items():
            DocumentSDPA.forward = forward  # type: ignore[method-assign]
            model.load_state_dict(state)
            if args.profile and repeat == args.repeats and name != "length":
                profiler = cProfile.Profile()
                profiler.enable()
                epoch(model, optimizer, batches[kind])
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
                profiles[name] = out.getvalue()
                continue
            cpu = time.process_time()
            seconds = epoch(model, optimizer, batches[kind])
            cpu = time.process_time() - cpu
            if repeat:
                times[name].append(seconds)
                cpu_times[name].append(cpu)
    DocumentSDPA.forward = per_example  # type: ignore[method-assign]

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    print(f"{len(indices)} examples{' of ' + str(args.encoded) if args.encoded else ''}, {tokens:,} tokens; batches: length {len(batches['length'])}, packed {len(batches['packed'])}; "
          f"model {shape or 'tiny_llama'}; {args.dtype}{' autocast' if AUTOCAST else ''}; torch threads {torch.get_num_threads()}; git {commit}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"| contender | epoch wall time, best (s) | median (s) | tokens/s (best) | CPU time, best (s) | median (s) |\n|---|---|---|---|---|---|")
    for name, ts in times.items():
        if ts:
            cs = cpu_times[name]
            print(f"| {name} | {min(ts):.2f} | {statistics.median(ts):.2f} | {tokens / min(ts):,.0f} | {min(cs):.2f} | {statistics.median(cs):.2f} |")
    for name, text in profiles.items():
        print(f"\n--- cProfile, one epoch of {name}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
