"""Data at scale: time to the first training step and peak memory, old encoding path vs the encoded cache.

    .venv/bin/python bench/data_bench.py [--records 200000] [--scale-records 600000] [--steps 20]
        [--threads 1] [--only old,cold,second] [--encoders] [--record] [--keep DIR]

Generates a deterministic src/tgt JSONL (--records lines, ~275 bytes each: ~55 MB at 200K) into a
temporary directory, then trains the tiny model (`tiny_llama` card, random init) for --steps steps
on it, each contender in its own fresh process, side by side in one run:

  old    the data path before the cache (commit d567ba5), reproduced inline below: every record
         read into Python objects, encoded into Python int/bool lists one by one in the recipe, a
         tensor per example made up front, rows packed by scanning every row for each example;
         run through lmtune's own CLI with that path patched in
  cold   `lmtune instruction_finetune` now, on an empty cache: rank 0 encodes with worker
         processes into the shared cache (LMTUNE_CACHE_DIR, a fresh directory in the bench's
         work directory), then the arrays are memory-mapped
  second the same command on a new, empty OUT: the entry cold built is found and mapped (a
         second run, a sweep point or a stage on the same data)

Figures per contender: time to the first step (process start to the end of step 1, from fairseq2's
metrics) and the data's share of it (minus the same on --base-records records: what the process costs
without data), total wall time, the peak RSS of the training process itself (getrusage in the child,
so the encoding workers do not count; their peak is shown apart), and for the new path the
peak RSS growth per token between --records and --scale-records records (the 2M-record target
extrapolated from the two). --encoders also times the encoding alone three ways on 2 workers:
serial, lmtune's process pool, fairseq2's data pipeline map(num_parallel_calls).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS_FROM = REPO / "assets/tiny/gsm8k/sft/train.jsonl"
RESULTS = REPO / "bench/RESULTS.md"
MARKER = "<!-- data_bench rows -->"
TARGETS = "new path first step <= 0.5x old, second run's data time <= 0.1x the first run's, peak RSS <= 0.5x old; RSS growth <= 4 bytes/token"


# ---------------------------------------------------------------- data


def make_data(path: Path, n: int, seed: int = 13) -> None:
    """src/tgt records of words the tiny tokenizer knows, lognormal lengths (a long tail)."""
    words = sorted({w for line in WORDS_FROM.read_text().splitlines() for w in re.findall(r"[A-Za-z]+", line)})
    rng = random.Random(seed)

    def text(median: float, sigma: float) -> str:
        count = min(120, max(2, round(rng.lognormvariate(math.log(median), sigma))))
        return " ".join(str(rng.randint(0, 999)) if rng.random() < 0.2 else rng.choice(words) for _ in range(count)).capitalize() + "."

    with path.open("w") as fp:
        for _ in range(n):
            fp.write(json.dumps({"src": text(18, 0.6), "tgt": text(22, 0.8)}) + "\n")


# ---------------------------------------------------------------- the old path, as it was before the cache


def install_old_path() -> None:
    """Patches lmtune's run with the list-based encoding the cache replaced (commit d567ba5)."""
    import torch

    import lmtune.recipes.instruction_finetune as recipe
    import lmtune.runs.finetune as finetune
    from lmtune.data.batching import bucket_sizes, collate_padded
    import lmtune.data.packing as packing
    from lmtune.data.packing import collate_packed, group_rows, pack_examples
    from lmtune.data.records import read_records

    def best_fit_bins(lengths, capacity):  # type: ignore[no-untyped-def]
        """The packing of d567ba5: every row scanned for each example."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        bins, free = [], []
        for i in order:
            n, best = lengths[i], -1
            for b, space in enumerate(free):
                if n <= space and (best < 0 or space < free[best]):
                    best = b
                    if space == n:
                        break
            if best < 0:
                bins.append([i])
                free.append(capacity - n)
            else:
                bins[best].append(i)
                free[best] -= n
        return bins

    class OldExamples(list):  # type: ignore[type-arg]
        def trainable(self, max_seq_len: int, what: str) -> list[int]:
            return [i for i, e in enumerate(self) if len(e.tokens) <= max_seq_len and any(e.target_mask)]

    def prepare_examples(path, encoded, encoder, workers):  # type: ignore[no-untyped-def]
        return OldExamples(encoder.encode(r) for r in read_records(path))

    def build_pipeline(examples, *, indices, dp_rank, dp_size, max_seq_len, max_num_tokens, batch_size, pad_idx, shuffle_seed, packing=False):  # type: ignore[no-untyped-def]
        from fairseq2.data.data_pipeline import read_sequence

        kept = [examples[i] for i in indices]
        items = [{"tokens": torch.tensor(e.tokens, dtype=torch.int64), "target_mask": torch.tensor(e.target_mask)} for e in kept]
        if packing:
            lengths = [len(e.tokens) for e in kept]
            rows = pack_examples(lengths, max_seq_len, shuffle_seed or 0)
            builder = read_sequence(group_rows(rows, lengths, max_num_tokens))
            if shuffle_seed is not None:
                builder = builder.shuffle(0, seed=shuffle_seed)
            if dp_size > 1:
                builder = builder.shard(dp_rank, dp_size, allow_uneven=True)
            return builder.map(lambda b: collate_packed([items[i] for i in b])).and_return()
        builder = read_sequence(items)
        if shuffle_seed is not None:
            builder = builder.shuffle(0, seed=shuffle_seed)
        if dp_size > 1:
            builder = builder.shard(dp_rank, dp_size, allow_uneven=True)
        builder = builder.bucket(batch_size) if batch_size is not None else builder.bucket_by_length(bucket_sizes(max_seq_len, max_num_tokens), selector="tokens")
        return builder.map(lambda b: collate_padded(b, pad_idx)).and_return()

    packing.best_fit_bins = best_fit_bins
    recipe.prepare_examples = prepare_examples
    recipe.build_pipeline = build_pipeline
    finetune.check_records = read_records  # the old check kept every record while it ran
    finetune._cache_plans = lambda *a, **k: {}  # noqa: SLF001


def child(kind: str, argv: list[str], report: Path) -> int:
    """One contender, in its own process: lmtune's CLI, its own peak RSS written at the end."""
    if kind == "old":
        install_old_path()
    from lmtune.cli import main

    try:
        return main(argv)
    finally:
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report.write_text(json.dumps({"self_peak_rss": self_peak}))


# ---------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    records: int
    tokens: int = 0
    first_step_s: float = math.nan
    total_s: float = math.nan
    peak_rss: int = 0  # the training process itself
    peak_rss_all: int = 0  # with its encoding workers (wait4: the largest of the process tree)
    note: str = ""


def run(name: str, kind: str, data: Path, out: Path, records: int, args: argparse.Namespace, work: Path) -> Result:
    argv = ["instruction_finetune", str(out), "--config", "model=tiny_llama", f"dataset={data}", "max_seq_len=512",
            "max_num_tokens=4096", f"max_num_steps={args.steps}", "checkpoint_every_n_steps=100000", "publish_metrics_every_n_steps=1",
            "dtype=float32", "tensorboard=false", "learning_rate=1e-3"]  # fmt: skip
    report = work / f"{name}.rss.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "LMTUNE_CACHE_DIR": str(work / "cache")}
    log = work / f"{name}.log"
    with log.open("w") as fp:
        start, t0 = time.time(), time.monotonic()
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(report), "--", *argv], stdout=fp, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        total = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = " / ".join(log.read_text(errors="replace").splitlines()[-3:])
        return Result(name, records, note=f"failed (exit {rc}): {tail[-300:]} [log: {log}]")
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    first = dt.datetime.fromisoformat(rows[0]["Time"]).timestamp()
    if name == "second" and "lmtune: reusing the encoded" not in log.read_text():
        return Result(name, records, note=f"did not reuse the cache [log: {log}]")
    return Result(name, records, first_step_s=first - start, total_s=total, peak_rss=json.loads(report.read_text())["self_peak_rss"], peak_rss_all=usage.ru_maxrss * 1024)


def encoded_tokens(work: Path, data: Path) -> int:
    fingerprints = list((work / "cache/encoded").glob(f"{data.stem}-*/fingerprint.json"))
    return json.loads(fingerprints[0].read_text())["tokens"] if fingerprints else 0


def compare_encoders(data: Path, records: int, work: Path) -> list[tuple[str, float]]:
    """The encoding alone, on the first ``records`` lines: serial, process pool, fairseq2 parallel map."""
    from lmtune.catalog.cards import CardStore
    from lmtune.models.loading import load_tokenizer
    from lmtune.catalog.specs import resolve_model
    from lmtune.data.encoding import ExampleEncoder
    from lmtune.data.parallel_encoding import encode_jsonl
    from lmtune.data.records import parse_line

    part = work / "encoders.jsonl"
    with data.open() as src, part.open("w") as dst:
        for _, line in zip(range(records), src):
            dst.write(line)
    spec = resolve_model(CardStore(), "tiny_llama", None).tokenizer
    encoder = ExampleEncoder(load_tokenizer(spec), spec.hf_dir)
    times = []
    for name, workers in (("serial (1 process)", 1), ("process pool, 2 workers", 2)):
        t0 = time.monotonic()
        encode_jsonl(part, encoder, workers=workers)
        times.append((name, time.monotonic() - t0))

    from fairseq2.data.data_pipeline import read_sequence

    lines = part.read_text().splitlines()
    t0 = time.monotonic()
    pipeline = read_sequence(list(enumerate(lines, 1))).map(lambda x: encoder.encode(parse_line(part, x[0], x[1], True)), num_parallel_calls=2).and_return()
    n = sum(1 for _ in pipeline)
    assert n == records
    times.append(("fairseq2 map(num_parallel_calls=2)", time.monotonic() - t0))
    return times


def machine() -> str:
    name = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = " (uncommitted changes)" if subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout.strip() else ""
    return f"{name}, {os.cpu_count()} cores, git {commit}{dirty}"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def table(results: list[Result]) -> str:
    lines = ["| contender | records | tokens | time to 1st step (s) | total wall (s) | peak RSS, training process (GiB) | peak RSS with workers (GiB) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        if r.note:
            lines.append(f"| {r.name} | {r.records:,} | - | - | - | - | {r.note} |")
        else:
            lines.append(f"| {r.name} | {r.records:,} | {r.tokens:,} | {r.first_step_s:.1f} | {r.total_s:.1f} | {gib(r.peak_rss)} | {gib(r.peak_rss_all)} |")
    return "\n".join(lines)


def verdicts(results: list[Result]) -> list[str]:
    by = {r.name: r for r in results if not r.note}
    out = []

    def ratio(a: str, b: str, what: str, limit: float, attr: str) -> None:
        if a in by and b in by:
            x = getattr(by[a], attr) / getattr(by[b], attr)
            out.append(f"- {a} / {b} {what}: {x:.2f}x (target <= {limit}x): {'PASS' if x <= limit else 'FAIL'}")

    ratio("cold", "old", "time to first step", 0.5, "first_step_s")

    ratio("cold", "old", "peak RSS", 0.5, "peak_rss")
    ratio("second", "old", "peak RSS", 0.5, "peak_rss")
    base = by.get("cold@base")
    if base is not None and "cold" in by and "second" in by:
        cold, second = (by[n].first_step_s - base.first_step_s for n in ("cold", "second"))
        x = second / cold
        out.append(f"- second / cold data time (time to first step minus the {base.records:,}-record baseline's {base.first_step_s:.1f} s): "
                   f"{second:.1f} s / {cold:.1f} s = {x:.2f}x (target <= 0.1x): {'PASS' if x <= 0.1 else 'FAIL'}")  # fmt: skip
    if base is not None and "old" in by:
        above = {name: by[name].peak_rss - base.peak_rss for name in ("old", "cold", "second") if name in by}
        out.append("- peak RSS above the baseline (the new path on " + f"{base.records:,} records, {gib(base.peak_rss)} GiB): "
                   + ", ".join(f"{name} {n / 2**20:,.0f} MiB ({n / by[name].tokens:.1f} bytes/token)" for name, n in above.items()))  # fmt: skip
        for name in ("cold", "second"):
            if name in above and above["old"] > 0:
                out.append(f"- {name} / old peak RSS above the baseline: {above[name] / above['old']:.2f}x")
    for name in ("cold", "second"):
        small, large = by.get(name), by.get(f"{name}@scale")
        if small and large and large.tokens > small.tokens:
            per_token = (large.peak_rss - small.peak_rss) / (large.tokens - small.tokens)
            at_2m = small.peak_rss + per_token * (small.tokens * (2_000_000 / small.records) - small.tokens)
            out.append(f"- {name}: peak RSS grows {per_token:.2f} bytes/token from {small.records:,} to {large.records:,} records "
                       f"(target <= 4): {'PASS' if per_token <= 4 else 'FAIL'}; extrapolated to 2M records: {gib(int(at_2m))} GiB")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--scale-records", type=int, default=600_000, help="0: skip the growth measurement")
    parser.add_argument("--base-records", type=int, default=1000, help="the baseline: the new path on this few records (0: skip)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="old,cold,second")
    parser.add_argument("--encoders", type=int, default=0, help="also time the encoders alone on this many records")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "REPORT"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return child(args.child[0], rest[1:] if rest[:1] == ["--"] else rest, Path(args.child[1]))

    work = args.keep or Path(tempfile.mkdtemp(prefix="data_bench."))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "cache", ignore_errors=True)  # cold is cold
    load_before = "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())  # the machine is shared: say how busy it was
    only = set(args.only.split(","))
    results: list[Result] = []
    try:
        sizes = [args.records] + ([args.scale_records] if args.scale_records else []) + ([args.base_records] if args.base_records else [])
        for size in sizes:
            data = work / f"train_{size}.jsonl"
            if not data.exists():
                t0 = time.monotonic()
                make_data(data, size)
                print(f"generated {data} ({data.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s", flush=True)
            suffix = "" if size == args.records else "@scale" if size == args.scale_records else "@base"
            for name in ("old", "cold", "second"):
                if name not in only or (name == "old" and suffix) or (name == "second" and suffix == "@base"):
                    continue
                out = work / f"{name}{suffix}"  # second: a new OUT; the cache is cold's
                shutil.rmtree(out, ignore_errors=True)
                r = run(name + suffix, "old" if name == "old" else "new", data, out, size, args, work)
                r.tokens = encoded_tokens(work, data)
                results.append(r)
                print(table([r]).splitlines()[-1], flush=True)
        if results and results[0].name == "old" and not results[0].tokens:
            results[0].tokens = next((r.tokens for r in results if r.records == args.records and r.tokens), 0)
        encoders = compare_encoders(work / f"train_{args.records}.jsonl", args.encoders, work) if args.encoders else []
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    text = [f"### data_bench, {dt.datetime.now():%Y-%m-%d %H:%M}", "",
            f"- command: `bench/data_bench.py {' '.join(sys.argv[1:])}`",
            f"- machine: {machine()}; load average (1, 5, 15 min) {load_before} before, " + "{:.2f}, {:.2f}, {:.2f} after".format(*os.getloadavg()) + f"; OMP_NUM_THREADS={args.threads}; tiny_llama, {args.steps} steps, max_seq_len 512, max_num_tokens 4096, packing", "",
            table(results), "", f"Targets ({TARGETS}):", *verdicts(results)]  # fmt: skip
    if encoders:
        text += ["", f"Encoding alone, {args.encoders:,} records:", *[f"- {name}: {s:.1f} s ({args.encoders / s:,.0f} records/s)" for name, s in encoders]]
    report = "\n".join(text) + "\n"
    print(report)
    if args.record:
        body = RESULTS.read_text()
        RESULTS.write_text(body.replace(MARKER, MARKER + "\n\n" + report, 1) if MARKER in body else body + "\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
