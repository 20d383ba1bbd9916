"""TRL's side of ``benchmarks.bench_vs_trl``: its data and the prompt-token check, one ``GRPOTrainer`` run that
reports per-step records and pauses between blocks of steps, and the check that two trainers did the same work.
``trl`` is imported inside the functions that run it (the ``bench`` extra), so the pure parts load without it."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from benchmarks.common import StepGate, device_clock, peak_gpu_mib, peak_rss_mib, start_device
from benchmarks.trl_settings import BenchSettings, settings_from_json, trl_config_kwargs


class UnequalWorkError(RuntimeError):
    """The two trainers did not train on the same tokens: their timings would not be comparable."""


def check_equal_work(
    settings: BenchSettings, ours: dict[str, Any], trl: dict[str, Any], names: tuple[str, str] = ("ours", "trl")
) -> None:
    """Fail loudly unless both runs generated exactly B x G x L completion tokens at every step and trained on the
    same number of prompt + completion tokens step by step (same prompts, same tokenization).

    ``ours["steps"]`` / ``trl["steps"]``: per step, ``completion_tokens`` (all completion tokens of the step),
    ``min_completion_length``, ``max_completion_length`` and ``trained_tokens`` (prompt + completion tokens of
    every sequence); None where a trainer did not report it. ``names`` name the two runs in the message.
    """
    expected = settings.completion_tokens_per_step
    length = settings.completion_length
    problems: list[str] = []
    for name, run in zip(names, (ours, trl), strict=True):
        steps = run["steps"]
        if len(steps) != settings.total_steps:
            problems.append(f"{name}: {len(steps)} steps recorded, {settings.total_steps} expected")
        for i, step in enumerate(steps):
            if step["completion_tokens"] != expected:
                problems.append(f"{name} step {i}: {step['completion_tokens']} completion tokens, expected {expected}")
            for key in ("min_completion_length", "max_completion_length"):
                if step.get(key) is not None and step[key] != length:
                    problems.append(f"{name} step {i}: {key} {step[key]}, expected {length}")
    for i, (a, b) in enumerate(zip(ours["steps"], trl["steps"], strict=False)):
        if a["trained_tokens"] != b["trained_tokens"]:
            problems.append(
                f"step {i}: {names[0]} trained on {a['trained_tokens']} tokens, {names[1]} on {b['trained_tokens']}"
            )
    if problems:
        raise UnequalWorkError(
            "The trainers did not do the same work, so their timings are not comparable:\n  "
            + "\n  ".join(problems)
            + "\nCheck the settings mapping (python -m benchmarks.bench_vs_trl --help) and the TRL version."
        )


def trl_format_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Our ``format`` reward on TRL's conversational completions (a list of messages per completion)."""
    from grpo_lightning.rewards.format import format_reward

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return format_reward(texts)


trl_format_reward.__name__ = "format"  # TRL logs rewards under the function's name, as ours does


def _step_clock(device: str, gate: StepGate, settings: BenchSettings):
    """A TRL callback that hands each optimizer step's record to ``gate`` once TRL has logged the step (its wall time
    so holds the step's logging, as ours holds its own): the time inside the step (``on_step_begin`` to
    ``on_step_end``) and the token counts of TRL's log."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = 0.0
            self.tokens_seen = 0.0  # TRL's num_tokens: cumulative prompt + completion tokens

        def on_train_begin(self, args, state, control, **kwargs):
            gate.begin()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = device_clock(device)

        def on_step_end(self, args, state, control, **kwargs):
            self.end = device_clock(device)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "completions/mean_length" not in logs:
                return
            trained = logs["num_tokens"] - self.tokens_seen
            self.tokens_seen = logs["num_tokens"]
            gate.step_done(
                {
                    "in_step_s": self.end - self.begin,
                    "completion_tokens": round(logs["completions/mean_length"] * settings.sequences_per_step),
                    "trained_tokens": round(trained),
                    "min_completion_length": round(logs["completions/min_length"]),
                    "max_completion_length": round(logs["completions/max_length"]),
                }
            )

    return StepClock()


def run_trl(spec: dict[str, Any], gate: StepGate) -> dict[str, Any]:
    """One TRL GRPOTrainer run of ``total_steps`` steps on the same data, paused between blocks of steps by ``gate``
    (which receives every step's record); returns the peak memory."""
    import datasets
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    s = settings_from_json(spec["settings"])
    start_device(s.device, s.threads)
    if spec["trl_lm_head"] == "completion-only":
        # TRL scores only the completion positions when _use_triton says so (CUDA); answering yes here changes
        # that choice alone: the log-prob kernels keep their own check and run their torch code on the CPU.
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = lambda device: True
    dataset = datasets.load_from_disk(spec["trl_dataset"])
    config = GRPOConfig(**trl_config_kwargs(s, spec["output_dir"], spec["suppress_token_ids"]))
    trainer = GRPOTrainer(
        model=spec["model_path"],
        reward_funcs=[trl_format_reward],
        args=config,
        train_dataset=dataset,
        callbacks=[_step_clock(s.device, gate, s)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return {"peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": peak_gpu_mib(s.device)}


def _save_dataset(items: list[dict[str, Any]], dataset_dir: Path) -> None:
    """Our data module's items as TRL's dataset rows, in the same order: a conversational prompt holding our rendered
    prompt text (TRL puts the image placeholder before it, as our adapter does), the PIL image and the solution."""
    import datasets

    rows = {
        "prompt": [[{"role": "user", "content": item["prompt"]}] for item in items],
        "image": [item["image"] for item in items],
        "solution": [item["solution"] for item in items],
    }
    features = datasets.Features(
        {
            "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "image": datasets.Image(),
            "solution": datasets.Value("string"),
        }
    )
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(dataset_dir))


def _check_prompt_tokens(adapter, processor, items: list[dict[str, Any]], dataset_dir: Path, count: int) -> list[int]:
    """Stop unless the first ``count`` prompts give identical token ids through our adapter and through TRL's path
    (its message preparation and the processor's chat template, from the saved dataset); returns their lengths."""
    import datasets
    import torch
    from trl.data_utils import prepare_multimodal_messages

    reloaded = datasets.load_from_disk(str(dataset_dir))
    prompt_lengths = []
    for i in range(count):
        ours = adapter.prepare_prompts([items[i]["image"]], [items[i]["prompt"]]).input_ids[0]
        messages = prepare_multimodal_messages(reloaded[i]["prompt"], images=[reloaded[i]["image"]])
        theirs = processor.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        if not torch.equal(ours, torch.as_tensor(theirs)):
            raise UnequalWorkError(
                f"Prompt {i} tokenizes differently: ours {len(ours)} tokens, TRL's path {len(theirs)} tokens. "
                "Both trainers must see the same prompt tokens; check the chat template and the dataset rows."
            )
        prompt_lengths.append(len(ours))
    return prompt_lengths


def prepare_trl_inputs(paths: dict[str, str], work_dir: Path, settings: BenchSettings) -> dict[str, Any]:
    """TRL's view of the same data (saved under ``work_dir``), the tokens our sampler suppresses, and a check that
    both trainers' prompt tokenization gives identical ids for the first prompts."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from grpo_lightning.adapters import build_adapter
    from grpo_lightning.data import ViVQAXDataModule

    data = ViVQAXDataModule(
        train_file=paths["train_file"], train_image_dir=paths["train_image_dir"], batch_size=1, shuffle=False
    )
    data.setup("fit")
    items = [data.dataset("train")[i] for i in range(len(data.dataset("train")))]
    dataset_dir = work_dir / "trl_dataset"
    _save_dataset(items, dataset_dir)

    model_path = paths["model_path"]
    processor = AutoProcessor.from_pretrained(model_path)
    config = AutoConfig.from_pretrained(model_path)
    adapter = build_adapter(config.model_type, processor)
    # suppressed_token_ids reads only the model's two configs: no need to load the weights here
    configs = types.SimpleNamespace(config=config, generation_config=GenerationConfig.from_pretrained(model_path))
    suppress = adapter.suppressed_token_ids(configs)
    prompt_lengths = _check_prompt_tokens(adapter, processor, items, dataset_dir, settings.prompts_per_step)
    return {"trl_dataset": str(dataset_dir), "suppress_token_ids": suppress, "prompt_lengths": prompt_lengths}
