"""What a LoRA weight update costs the vLLM engine: the adapted layers merged (``vllm.lora_sync: merged``) against the
adapters alone (``vllm.lora_sync: adapter``).

    python -m benchmarks.bench_lora_sync [--ranks 8 16] [--rounds 5] [--shape cpu|demo]

For each LoRA rank and each mode, starts the vLLM engine (``--vllm-python``, ``make vllm-env``) on the CPU benchmarks'
InternVL (``grpo_demo.CPU_MODEL_SHAPE``, 43.5M parameters; ``--shape demo``: the demo's tiny one) with LoRA on every
attention and MLP projection of its language model, sends the first update (every weight, in both modes), then
``--rounds`` updates, each after the adapters moved (their B matrices nudged, as an optimizer step would), and prints
per rank and mode the first update's megabytes and seconds and the later ones' medians: megabytes written to shared
memory, seconds of the whole update and of the engine's part (loading; with ``adapter``, adding the new LoRA and
removing the old). The engine samples nothing here; that the two modes sample the same is
``tests/test_vllm_engine.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import torch

import grpo_demo
from benchmarks.common import format_table, load_average, work_directory
from grpo_lightning.config import LoRAConfig, LossConfig, VLLMConfig
from grpo_lightning.engines.vllm import VLLMEngine
from grpo_lightning.module import GRPOModule

MODES = ("merged", "adapter")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("cpu", "demo"), default="cpu", help="CPU_MODEL_SHAPE or the demo model")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=5, help="updates measured after the first")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--work-dir", default=None, help="where the model is built (default: a temp folder)")
    return parser.parse_args()


def measure(model_dir: Path, rank: int, mode: str, args: argparse.Namespace) -> dict[str, float]:
    """The first update's and the later updates' median figures of one engine."""
    torch.manual_seed(0)
    module = GRPOModule(
        model_name_or_path=str(model_dir),
        lora=LoRAConfig(r=rank, alpha=2.0 * rank, dropout=0.0),
        loss=LossConfig(beta=0.0),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5),
    )
    module.configure_model()
    engine = VLLMEngine(VLLMConfig(python=args.vllm_python, kv_cache_gib=1, max_model_len=2048, lora_sync=mode))
    engine.start(module.model, module.adapter, "float32")
    try:
        first = engine.sync_weights(module.model)
        later = []
        for _ in range(args.rounds):
            with torch.no_grad():
                for name, parameter in module.model.named_parameters():
                    if "lora_B" in name:
                        parameter.add_(0.01 * torch.randn_like(parameter))
            later.append(engine.sync_weights(module.model))
    finally:
        engine.stop()
    median = {key: statistics.median(update[key] for update in later) for key in later[0]}
    return {
        "first_mb": first["megabytes"],
        "first_s": first["seconds"],
        "mb": median["megabytes"],
        "s": median["seconds"],
        "engine_s": median["engine_seconds"],
    }


def main() -> None:
    args = parse_args()
    with work_directory(args.work_dir, "bench-lora-sync-") as work:
        model_dir = work / "cpu-internvl"
        if args.shape == "demo":
            data_root = work / "demo"
            if not grpo_demo.is_complete(data_root):
                grpo_demo.build_demo_assets(data_root)
            model_dir = grpo_demo.internvl_path(data_root)
        elif not (model_dir / "config.json").exists():
            grpo_demo.build_tiny_internvl(model_dir, **grpo_demo.CPU_MODEL_SHAPE)
        results = {(rank, mode): measure(model_dir, rank, mode, args) for rank in args.ranks for mode in MODES}
    print(
        f"torch {torch.__version__}, load average {load_average()}; model {args.shape}, float32, "
        f"{args.rounds} updates measured after the first (medians)\n"
    )
    header = ["LoRA r", "lora_sync", "first update MB", "first s", "update MB", "update s", "engine s"]
    rows = [
        [str(rank), mode, f"{r['first_mb']:.2f}", f"{r['first_s']:.3f}", f"{r['mb']:.3f}", f"{r['s']:.3f}",
         f"{r['engine_s']:.3f}"]
        for (rank, mode), r in results.items()
    ]  # fmt: skip
    print(format_table(header, rows))
    for rank in args.ranks:
        merged, adapter = results[rank, "merged"], results[rank, "adapter"]
        print(
            f"r={rank}: adapter_mb/merged_mb={adapter['mb'] / merged['mb']:.4f} "
            f"adapter_s/merged_s={adapter['s'] / merged['s']:.3f}"
        )


if __name__ == "__main__":
    main()
