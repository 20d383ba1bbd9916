"""Peak memory and seconds of one policy pass, with the language-model head run in chunks of completion positions
and with whole (N, C, V) logits.

    python -m benchmarks.bench_logps_memory [--micro-batch 4] [--completion-length 256] [--repeats 3] [--rounds 2]

Builds, offline, a random-weight InternVL with InternVL3-1B's language-model width and its 151,674-token vocabulary
(``grpo_demo.models.INTERNVL3_1B_SHAPE``), cut to 2 language-model layers and 1 vision layer (``--layers``,
``--vision-layers``): the point is the logits, whose size the layers do not change. A policy pass is what training
runs on one micro-batch: the log-probs and entropies of ``--micro-batch`` completions of one prompt (its 448-px
image, 256 image tokens) of exactly ``--completion-length`` random tokens, under the policy in training mode (full
fine-tuning: the head, tied to the input embeddings, trains), a loss and its backward.

* chunked: ``VLMAdapter.completion_logps``, the product's path (``head_logps``, ``LOGITS_CHUNK_SIZE`` positions);
* whole: the same pass with the model's whole logits of the completion positions (``logits_to_keep``), as before
  the head ran in chunks, reproduced here for the comparison.

Each path runs in a fresh process (``--path``), ``--rounds`` times, alternating: one warm-up pass, then
``--repeats`` timed ones (gradients freed after each, as an optimizer step would leave them). Memory is the resident
set: the process's high-water mark over the whole run (``ru_maxrss``: model, inputs, warm-up included), and the
timed passes' own peak, the high-water mark (``VmHWM``, reset after the warm-up through ``/proc/self/clear_refs``)
above the resident set at that reset. The last line is ``peak_ratio=<chunked/whole>
pass_peak_ratio=<chunked/whole> time_ratio=<chunked/whole>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

from benchmarks.common import (
    busy_warning,
    format_table,
    load_average,
    machine_busy_seconds,
    others_share,
    own_cpu_seconds,
    package_version,
    peak_rss_mib,
    wait_for_quiet,
    work_directory,
)

PATHS = ("whole", "chunked")


def model_shape(args: argparse.Namespace) -> dict[str, Any]:
    from grpo_demo.models import INTERNVL3_1B_SHAPE

    return {**INTERNVL3_1B_SHAPE, "num_layers": args.layers, "vision_num_layers": args.vision_layers}


def build(work_dir: Path, shape: dict[str, Any]) -> Path:
    """The checkpoint under ``work_dir`` (reused when built before with the same shape)."""
    import grpo_demo

    path, marker = work_dir / "model", work_dir / "model.json"
    if not (marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == shape):
        grpo_demo.build_tiny_internvl(path, seed=0, **shape)
        marker.write_text(json.dumps(shape), encoding="utf-8")
    return path


def whole_logits_logps(adapter, model, prompts, prompt_index, completion_ids, completion_mask, temperature=1.0):
    """Log-probs and entropies from the model's whole logits of the completion positions, on the shared-prompt path
    (as ``completion_logps`` computed them before the head ran in chunks)."""
    import torch

    from grpo_lightning.adapters.prefix_cache import cache_through_checkpointing
    from grpo_lightning.algorithms import entropy_from_logits, selective_log_softmax

    width = completion_ids.shape[1]
    inputs = prompts.token_inputs(prompt_index, completion_mask)
    prompt_width = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)
    cache = adapter.prefill(model, prompts, prompt_index, growing=False)
    with cache_through_checkpointing(model):
        outputs = model(
            input_ids=inputs["input_ids"][:, prompt_width - 1 :],
            attention_mask=inputs["attention_mask"],
            **adapter.continuation_positions(model, inputs["attention_mask"], prompt_width - 1),
            cache=cache,
            logits_to_keep=width + 1,
            use_cache=False,
        )
    logits = outputs.logits[:, :-1, :] / temperature
    logits = logits.index_fill(-1, torch.tensor(adapter.suppressed_token_ids(model)), -torch.inf)
    logps = selective_log_softmax(logits, completion_ids).float().masked_fill(~completion_mask.bool(), 0.0)
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach())
    return logps, entropy


def run_path(args: argparse.Namespace) -> dict[str, Any]:
    """One path's passes in this process: seconds of each timed pass, the loss, peak resident memory."""
    import torch

    from grpo_lightning.config import LoggingConfig, LoRAConfig, RewardConfig
    from grpo_lightning.module import GRPOModule

    torch.set_num_threads(args.threads)
    module = GRPOModule(
        model_name_or_path=str(Path(args.work_dir) / "model"),
        rewards=RewardConfig(funcs=["format"]),
        logging=LoggingConfig(completions_every_n_steps=0),
        lora=LoRAConfig(r=args.lora_rank, alpha=2 * max(args.lora_rank, 1), dropout=0.0),
    )
    module.configure_model()
    model, adapter = module.model, module.adapter
    model.train()
    from PIL import Image

    prompts = adapter.prepare_prompts([Image.new("RGB", (448, 448), (90, 140, 200))], ["What is in the picture?"])
    prompt_index = [0] * args.micro_batch
    generator = torch.Generator().manual_seed(0)
    allowed = torch.ones(model.config.text_config.vocab_size, dtype=torch.bool)
    allowed[adapter.suppressed_token_ids(model) + adapter.eos_token_ids(model)] = False
    choices = allowed.nonzero()[:, 0]
    picks = torch.randint(len(choices), (args.micro_batch, args.completion_length), generator=generator)
    completion_ids = choices[picks]
    completion_mask = torch.ones_like(completion_ids)

    def policy_pass() -> float:
        model.zero_grad(set_to_none=True)
        if args.path == "chunked":
            logps, _ = adapter.completion_logps(
                model, prompts, prompt_index, completion_ids, completion_mask, with_entropy=True
            )
        else:
            logps, _ = whole_logits_logps(adapter, model, prompts, prompt_index, completion_ids, completion_mask)
        loss = -(logps * torch.linspace(-1.0, 1.0, args.micro_batch)[:, None]).mean()
        loss.backward()
        return loss.item()

    loss = policy_pass()  # warm-up: lazy initialisation, thread pools, the first gradients
    model.zero_grad(set_to_none=True)
    resting = reset_peak_rss()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        policy_pass()
        seconds.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return {
        "path": args.path,
        "seconds": seconds,
        "loss": loss,
        "peak_mib": peak_rss_mib(),
        "pass_peak_mib": status_mib("VmHWM") - resting,
    }


def status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark measures memory on Linux only")


def reset_peak_rss() -> float:
    """Reset this process's resident-set high-water mark (``VmHWM``) to its current size, which it returns (MiB)."""
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    return status_mib("VmRSS")


def child(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """``run_path`` in a fresh process (its own memory high-water mark); its result and the CPU share others took."""
    command = [sys.executable, "-m", "benchmarks.bench_logps_memory", "--path", path, "--work-dir", args.work_dir]
    for name in ("micro_batch", "completion_length", "repeats", "threads", "layers", "vision_layers", "lora_rank"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    busy, own, start = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"the {path} run failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - start
    result["others"] = others_share(machine_busy_seconds() - busy, own_cpu_seconds() - own, wall)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=4, help="completions per pass (one prompt)")
    parser.add_argument("--completion-length", type=int, default=256, help="tokens per completion (exact)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="processes per path, alternating")
    parser.add_argument("--layers", type=int, default=2, help="language-model layers (InternVL3-1B: 24)")
    parser.add_argument("--vision-layers", type=int, default=1, help="vision layers (InternVL3-1B: 24)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (the head frozen); 0: full fine-tuning")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", default=None, help="keep the model here (default: a temp dir)")
    parser.add_argument("--path", choices=PATHS, default=None, help="internal: run one path in this process")
    return parser.parse_args(argv)


def setup_line(args: argparse.Namespace, shape: dict[str, Any]) -> str:
    """The report's first line: versions, threads, load, the model and the passes."""
    return (
        f"torch {package_version('torch')}, transformers {package_version('transformers')}, "
        f"{args.threads} threads, "
        f"load {load_average()}; InternVL3-1B language-model width and vocabulary ({shape['pad_vocab_to']:,}), "
        f"{args.layers} language-model layers, {args.vision_layers} vision layer(s); micro-batch "
        f"{args.micro_batch} x {args.completion_length} completion tokens; "
        f"{f'LoRA rank {args.lora_rank}, head frozen' if args.lora_rank else 'full fine-tuning, head trains'}; "
        f"{args.rounds} processes per path"
    )


def run_rounds(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The model built and the setup line printed, then ``--rounds`` fresh processes per path, alternating; each
    path's results."""
    with work_directory(args.work_dir, "bench_logps_memory-") as work_dir:
        args.work_dir = str(work_dir)
        shape = model_shape(args)
        build(work_dir, shape)
        print(setup_line(args, shape))
        runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        for _ in range(args.rounds):
            for path in PATHS:
                wait_for_quiet(60)
                runs[path].append(child(args, path))
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per path: the highest process and pass peaks (MiB), the median seconds of a pass, and every pass's seconds."""
    return {
        path: {
            "peak": max(r["peak_mib"] for r in runs[path]),
            "pass": max(r["pass_peak_mib"] for r in runs[path]),
            "seconds": statistics.median(s for r in runs[path] for s in r["seconds"]),
            "all": " ".join(f"{s:.2f}" for r in runs[path] for s in r["seconds"]),
        }
        for path in PATHS
    }


def report(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Print the table, the losses (which must agree), any busy-machine warning and the ratios line."""
    losses = {path: runs[path][0]["loss"] for path in PATHS}
    if abs(losses["chunked"] - losses["whole"]) > 1e-6:
        raise RuntimeError(
            f"the chunked path's loss {losses['chunked']} differs from the whole logits' {losses['whole']}"
        )
    summary = summarize(runs)
    rows = [
        (
            path,
            f"{summary[path]['peak']:.0f}",
            f"{summary[path]['pass']:.0f}",
            f"{summary[path]['seconds']:.2f}",
            summary[path]["all"],
        )
        for path in PATHS
    ]
    headers = ("path", "process peak RSS MiB", "pass peak above resting MiB", "median s / pass", "passes (s)")
    print(format_table(headers, rows))
    print(f"losses: whole {losses['whole']:.9f}, chunked {losses['chunked']:.9f}")
    for line in busy_warning(max(r["others"] for path in PATHS for r in runs[path])):
        print(line)
    peak_ratio = summary["chunked"]["peak"] / summary["whole"]["peak"]
    pass_ratio = summary["chunked"]["pass"] / summary["whole"]["pass"]
    time_ratio = summary["chunked"]["seconds"] / summary["whole"]["seconds"]
    print(f"peak_ratio={peak_ratio:.3f} pass_peak_ratio={pass_ratio:.3f} time_ratio={time_ratio:.3f}")


def main() -> None:
    args = parse_args()
    if args.path is not None:
        print(json.dumps(run_path(args)))
        return
    report(run_rounds(args))


if __name__ == "__main__":
    main()
