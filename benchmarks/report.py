"""``benchmarks/REPORT.md`` and its plot from the results of one run (plus the hand-written analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ANALYSIS = Path(__file__).resolve().parent / "analysis.md"


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    for model in sorted({r["model"] for r in results["dialogues"]}):
        rows = [r for r in results["dialogues"] if r["model"] == model]
        n = [r["n"] for r in rows]
        short = "tiny" if model.startswith("tiny") else "SmolLM2"
        for key, style in (("sequential", "o--"), ("engine", "s-"), ("raw_generate", "^:")):
            left.plot(n, [r[key]["seconds"] for r in rows], style, label=f"{short} {key}")
    for row in (results.get("vllm") or {}).get("rows", []) and [results["vllm"]["rows"]]:
        left.plot([r["n"] for r in row], [r["vllm_engine"]["seconds"] for r in row], "d-", label="tiny engine on vLLM")
    left.set(xscale="log", yscale="log", xlabel="dialogues N (5 rounds)", ylabel="wall time (s)")
    left.set_title("dialogue generation", fontsize=10)
    left.legend(fontsize=7)
    bars = {
        "engine vs seq.\n(largest N, tiny)": max(
            (r for r in results["dialogues"] if r["model"].startswith("tiny")), key=lambda r: r["n"]
        )["speedup"],
        "ESC-RANK\nlogits vs gen.": results["esc_rank"]["speedup_logits_vs_generate"],
        "ESC-RANK\nlogits vs ref.": results["esc_rank"]["speedup_logits_vs_reference"],
        "GuardRank\nLlama": results["guardrank"]["llama_decoder"]["speedup"],
        "GuardRank\nRoBERTa": results["guardrank"]["roberta_encoder"]["speedup"],
    }
    vllm_largest = ((results.get("vllm") or {}).get("rows") or [{}])[-1]
    if "vllm_speedup_over_sequential" in vllm_largest:
        bars["engine on vLLM\nvs seq. (tiny)"] = vllm_largest["vllm_speedup_over_sequential"]
    right.bar(list(bars), list(bars.values()), color="tab:blue")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_ylabel("speed-up (×)")
    right.set_title("batched vs reference-style", fontsize=10)
    right.tick_params(axis="x", labelsize=7, labelrotation=25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _dialogue_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | N | new tokens (seeker/supporter) | prompt tokens | engine s | sequential s | raw generate s"
        " | speed-up | engine / raw | same turns | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [*results["dialogues"], *results.get("dialogues_long_turns", [])]:
        widths = "–".join(map(str, r.get("prompt_tokens_range", ["?"])))
        tokens = f"{r['max_new_tokens']}/{r.get('supporter_new_tokens') or r['max_new_tokens']}"
        lines.append(
            f"| {r['model']} | {r['n']} | {tokens} | {widths} | {r['engine']['seconds']:.1f} | "
            f"{r['sequential']['seconds']:.1f} | {r['raw_generate']['seconds']:.1f} | **{r['speedup']}×** | "
            f"{r['engine_over_raw']} | {r['same_turns_engine_vs_sequential']:.0%} | {r['engine']['load_before']:.1f} |"
        )
    return lines


def _split(row: dict[str, Any], key: str) -> tuple[float, float, float]:
    """(prefill, decode, everything else) seconds of the engine or sequential run of a dialogue row."""
    forward = row[key]["forward"]
    return forward["prefill_s"], forward["decode_s"], row[key]["seconds"] - forward["prefill_s"] - forward["decode_s"]


def _split_lines(results: dict[str, Any]) -> list[str]:
    """Where each run's time goes, and what batching buys in each part (sequential s / engine s)."""
    rows = [r for r in [*results["dialogues"], *results.get("dialogues_long_turns", [])] if "forward" in r["engine"]]
    if not rows:
        return []
    lines = [
        "## Where the time goes: prefill, decode, everything else",
        "",
        "Forward passes timed inside both runs of each row above: *prefill* = passes over the prompt (the engine's"
        " are left-padded to the longest prompt of the batch and masked), *decode* = one-token passes, *other* ="
        " the rest (templating, tokenising, the generate loop, lm-eval). Each cell: engine s / sequential s"
        " (what batching buys in that part).",
        "",
        "| model | N | prefill | decode | other | prefill share of sequential | prompt positions engine / sequential |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        engine, sequential = _split(r, "engine"), _split(r, "sequential")
        cells = [f"{e:.1f} / {q:.1f} ({q / e:.1f}×)" if e > 0 else "–" for e, q in zip(engine, sequential, strict=True)]
        padded = r["engine"]["forward"]["prefill_tokens"] / max(1, r["sequential"]["forward"]["prefill_tokens"])
        lines.append(
            f"| {r['model']} | {r['n']} | {' | '.join(cells)} | {sequential[0] / r['sequential']['seconds']:.0%} | "
            f"{padded:.2f} |"
        )
    parts = [r for r in rows if "parts_s" in r["engine"]]
    if parts:
        lines += [
            "",
            "The engine run's wall time by whose code runs: `model.generate` (HFLM's calls), lm-eval's HFLM around"
            " them (tokenising every prompt twice — once to sort, once to encode — and decoding each step for its"
            " stop sequences), and the engine's own code (chat views, transcripts, saving each batch's turns to the"
            " dialogue store).",
            "",
            "| model | N | engine s | model.generate s | lm-eval HFLM s | engine's own s | engine's own share |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in parts:
            p = r["engine"]["parts_s"]
            lines.append(
                f"| {r['model']} | {r['n']} | {r['engine']['seconds']:.2f} | {p['model_generate']:.2f} | "
                f"{p['lm_eval_hflm']:.2f} | {p['engine_own']:.3f} | {p['engine_own'] / r['engine']['seconds']:.1%} |"
            )
    return [*lines, ""]


def summary_table(results: dict[str, Any]) -> list[str]:
    """The headline numbers against the issue's targets (also pasted into the README)."""
    tiny = [r for r in results["dialogues"] if r["model"].startswith("tiny")]
    big = max(tiny, key=lambda r: r["n"])
    rank, guard = results["esc_rank"], results["guardrank"]
    worst_overhead = max(r["engine_over_raw"] for r in results["dialogues"])
    rows = [
        (f"engine vs sequential reference (tiny, N={big['n']})", "≥ 10×", f"{big['speedup']}×"),
    ]
    for r in results["dialogues"]:
        if not r["model"].startswith("tiny"):
            rows.append((f"engine vs sequential reference ({r['model']}, N={r['n']})", "≥ 10×", f"{r['speedup']}×"))
    vllm_rows = (results.get("vllm") or {}).get("rows", [])
    if vllm_rows and "vllm_speedup_over_sequential" in vllm_rows[-1]:
        last = vllm_rows[-1]
        rows.append(
            (
                f"engine on vLLM vs sequential reference on hf (tiny, N={last['n']})",
                "≥ 10×",
                f"{last['vllm_speedup_over_sequential']}×",
            )
        )
    rows += [
        ("engine / raw batched generate (worst row)", "≤ 1.15", f"{worst_overhead}"),
        ("ESC-RANK logits vs generate", "≥ 4×", f"{rank['speedup_logits_vs_generate']}×"),
        ("ESC-RANK logits vs reference loop", "—", f"{rank['speedup_logits_vs_reference']}×"),
        (
            "ESC-RANK logits = generate where the first token is a digit",
            "identical",
            f"{rank['logits_equal_generate_where_digit_first']} ({rank['first_token_digit_share']:.0%} digit-first)",
        ),
        ("GuardRank Llama batched vs batch 1", "≥ 5×", f"{guard['llama_decoder']['speedup']}×"),
        ("GuardRank RoBERTa batched vs batch 1", "≥ 5×", f"{guard['roberta_encoder']['speedup']}×"),
    ]
    memory = results["memory"]
    rows.append(
        (
            f"driver heap per transcript character (N={'/'.join(str(m['n']) for m in memory)})",
            "flat",
            " / ".join(f"{m['engine_heap_bytes_per_transcript_char']:.0f} B" for m in memory),
        )
    )
    return ["| measure | target | measured |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def write_report(results: dict[str, Any], report: Path, plot: Path) -> None:
    _plot(results, plot)
    m = results["machine"]
    rank, guard = results["esc_rank"], results["guardrank"]
    lines = [
        "# Performance report",
        "",
        f"Generated by `{results['command']}` on {results['started']} ({results['total_seconds']} s): "
        f"{m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} thread(s), Python {m['python']}; "
        f"load average {m['load_avg_start']} at the start, {m['load_avg_end']} at the end (the CPU is shared). "
        "Raw numbers: `benchmarks/results/latest.json`; profile: `benchmarks/results/profile_engine.txt`.",
        "",
        "## Against the targets",
        "",
        *summary_table(results),
        "",
        f"![wall time and speed-ups]({plot.relative_to(report.parent).as_posix()})",
        "",
        "## Dialogues: engine (lm-eval HFLM) vs sequential reference loop vs raw batched `generate`",
        "",
        "Same model object for all three and for both speakers, same cards, 5 rounds, greedy, the same token budget; "
        f"HFLM and raw batches of up to {results['dialogues'][0]['batch_size']} rows. *load* = 1-min load average."
        " The cards are the package's six demo cards (EN and ZH) cycled. The token budgets keep the sequential"
        " reference affordable; the last tiny row uses turn lengths nearer the reference transcripts' (seekers"
        " ~30–150 tokens, supporters ~190–590 on average).",
        "",
        *_dialogue_table(results),
        "",
        *_split_lines(results),
        *_trials_lines(results.get("trials")),
        *_ceiling_lines(results.get("ceiling")),
        *_attention_lines(results.get("attention")),
        "## Memory (tiny model, tracemalloc on: driver Python heap; RSS sampled every 20 ms)",
        "",
        "| N | transcript chars | engine heap peak MB | sequential heap peak MB | engine RSS Δ MB"
        " | sequential RSS Δ MB | heap B / char |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['n']} | {r['transcript_chars']} | {r['engine_heap_peak_mb']} | {r['sequential_heap_peak_mb']} | "
            f"{r['engine_rss_delta_mb']} | {r['sequential_rss_delta_mb']} | "
            f"{r['engine_heap_bytes_per_transcript_char']} |"
            for r in results["memory"]
        ),
        "",
        f"## ESC-RANK scoring ({rank['requests']} judgements = dialogues × 7, {rank['prompt_tokens']} prompt tokens, "
        f"batch {rank['batch_size']})",
        "",
        "| mode | s | judgements / s | RSS Δ MB |",
        "|---|---|---|---|",
        *(
            f"| {name} | {rank[name]['seconds']:.2f} | {rank[name]['judgements_per_s']} | "
            f"{rank[name]['rss_delta_mb']:.0f} |"
            for name in ("logits", "generate", "generate_2_tokens", "reference_loop")
        ),
        "",
        f"First generated token a digit: {rank['first_token_digit_share']:.0%}; logits = generate there: "
        f"{rank['logits_equal_generate_where_digit_first']}; batched generate = reference loop: "
        f"{rank['generate_equals_reference_loop']:.0%}.",
        "",
        f"## GuardRank scoring ({guard['items']} items, batch {guard['batch_size']} vs 1)",
        "",
        "*batch-1 minimal*: batch 1 on one-word prompts and answers (the fixed cost of a call); *ceiling*: batch-1 s"
        " / (batch-1 s − batch-1 minimal s), the speed-up if batching removed that fixed cost and nothing else.",
        "",
        "| classifier | tokens | batched s | batch-1 s | batch-1 minimal s | speed-up | ceiling | same labels"
        " | batched RSS Δ MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {guard[name]['tokens']} | {guard[name]['batched']['seconds']:.3f} | "
            f"{guard[name]['batch_1']['seconds']:.3f} | {guard[name].get('batch_1_minimal', {}).get('seconds', '–')} | "
            f"{guard[name]['speedup']}× | {guard[name].get('ceiling') or '–'}× | {guard[name]['same_labels']} | "
            f"{guard[name]['batched']['rss_delta_mb']:.0f} |"
            for name in ("llama_decoder", "roberta_encoder")
        ),
        "",
        "## vLLM (both speakers on lm-eval's `vllm` backend, vLLM CPU build)",
        "",
        *_vllm_lines(results.get("vllm")),
        "",
    ]
    if ANALYSIS.is_file():
        lines += [ANALYSIS.read_text("utf-8").rstrip(), ""]
    report.write_text("\n".join(lines))


def _trials_lines(trials: dict[str, Any] | None) -> list[str]:
    """What ``trials=3`` costs against ``trials=1`` (the same cards; the trials share the batches)."""
    if not trials:
        return []
    one, *more = trials["rows"]
    lines = [
        f"## Trials: `trials=3` against `trials=1` ({trials['model']}, {trials['cards']} cards)",
        "",
        f"The engine as `lm_eval` runs it, {trials['rounds']} rounds, up to {trials['max_new_tokens']} new tokens a"
        f" turn, batches of up to {trials['batch_size']} rows; both runs back to back on the same model object"
        f" (measured {trials.get('measured', 'with the suite')}). Each card's trials join the same round-synchronous"
        " batches, so a run makes the same number of calls while the dialogues (and the judge's work, not measured"
        " here: every dialogue is judged) triple. Both speakers decode greedily here, so every trial's turns are as"
        " long as trial 0's; with the sampled help-seeker of a real run they vary.",
        "",
        "| trials | dialogues | `generate` calls | generated token slots | tokens in / out (role-player) |"
        " tokens in / out (supporter) | s | × trials=1 s | RSS Δ MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (one, *more):
        tokens = [
            f"{row['prompt_tokens'][s]:,} / {row['completion_tokens'][s]:,}" if "prompt_tokens" in row else "–"
            for s in ("seeker", "supporter")
        ]
        lines.append(
            f"| {row['trials']} | {row['dialogues']} | {row['generate_calls']} | {row['generated_token_slots']} | "
            f"{tokens[0]} | {tokens[1]} | {row['seconds']:.2f} | {row['seconds'] / one['seconds']:.2f}× | "
            f"{row['rss_delta_mb']:.0f} | {row['load_before']:.1f} |"
        )
    lines += [
        "",
        "The token columns are what the run records as its usage (`configs.<task>.metadata.esc_eval.usage`), counted"
        " by the model's tokenizer: what an API would bill per role. With prices per million tokens (`prices`"
        " setting), the cost grows with them.",
    ]
    return [*lines, ""]


def _ceiling_lines(ceiling: list[dict[str, Any]] | None) -> list[str]:
    """What batching alone can buy at each context length (the engine's rounds span the widths above)."""
    if not ceiling:
        return []
    rows = ceiling[0]["rows"]
    return [
        f"## Batching ceiling (tiny model: {rows} prompts × {ceiling[0]['new_tokens']} new tokens, "
        f"one `generate` at a time vs one call of {rows} rows, no padding, no lm-eval)",
        "",
        "| context tokens | one at a time s | batched s | ceiling |",
        "|---|---|---|---|",
        *(f"| {r['context_tokens']} | {r['one_at_a_time_s']} | {r['batched_s']} | {r['ceiling']}× |" for r in ceiling),
        "",
    ]


def _attention_lines(attention: list[dict[str, Any]] | None) -> list[str]:
    """The prefill attention kernel with and without a padding mask (why batched prefill costs more on CPU)."""
    if not attention:
        return []
    return [
        f"## Attention kernels (one prefill's attention, {attention[0]['context']} positions, "
        "torch `scaled_dot_product_attention` on CPU)",
        "",
        "| head shape | batch | fused causal s | with padding mask s | mask penalty | one row at a time (causal) s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['shape']} | {r['batch']} | {r['causal_s']} | {r['padding_mask_s']} | {r['mask_penalty']}× | "
            f"{r['per_row_causal_s']} |"
            for r in attention
        ),
        "",
    ]


def _vllm_lines(vllm: dict[str, Any] | None) -> list[str]:
    if not vllm:
        return ["Not run (`--skip-vllm`)."]
    if vllm.get("status") != "ok":
        return [f"Status: {vllm.get('status')}.", "", "```", vllm.get("stderr_tail", "").strip()[-1500:], "```"]
    lines = [
        f"vLLM {vllm['vllm']}, engine start {vllm['engine_start_seconds']} s; tiny model 64 wide with 2 heads "
        "(vLLM's CPU attention needs head size ≥ 32), prefix caching on.",
        "",
        "| N | vLLM engine s | hf engine s (same model) | sequential reference s (hf) | vLLM vs hf engine"
        " | vLLM vs sequential | same turns vLLM / hf | transcript chars vLLM / hf / sequential |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in vllm["rows"]:
        chars = " / ".join(str(v) for v in r.get("transcript_chars", {}).values()) or "–"
        sequential = r.get("sequential_hf", {}).get("seconds")
        lines.append(
            f"| {r['n']} | {r['vllm_engine']['seconds']:.1f} | {r['hf_engine']['seconds']:.1f} | "
            f"{f'{sequential:.1f}' if sequential else '–'} | {r['vllm_speedup_over_hf']}× | "
            f"{r.get('vllm_speedup_over_sequential', '–')}× | {r['same_turns_vllm_vs_hf']:.0%} | {chars} |"
        )
    return [
        *lines,
        "",
        "The turns differ because vLLM does not apply the `suppress_tokens` / `begin_suppress_tokens` of the tiny"
        " model's generation config (hf does); the transcript lengths show how much text each produced.",
    ]


def main() -> int:
    """``python -m benchmarks.report``: re-render REPORT.md and the plot from ``results/latest.json``."""
    import json

    here = Path(__file__).resolve().parent
    results = json.loads((here / "results" / "latest.json").read_text("utf-8"))
    write_report(results, here / "REPORT.md", here / "results" / "speedup.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
