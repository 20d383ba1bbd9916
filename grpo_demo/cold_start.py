"""The demo's cold start: a short supervised warm-up that teaches a tiny random-weight model the answer format, and
only the format, before GRPO trains it.

Real GRPO runs start from a model that already writes something like the wanted output (an instruct checkpoint, or
DeepSeek-R1's "cold start" fine-tuning on a few thousand formatted samples); a random-weight model never samples
the strict format in a 100-step demo, so its format reward and validation would stay at 0. The cold start closes
that gap without teaching the task: each of its examples pairs a synthetic picture and question (scenes of their
own seed, none of them in the demo dataset) with a tagged completion whose shape count, answer and explanation are
drawn at random from other examples::

    <think>Trong ảnh có 2 hình.</think><answer>đỏ</answer><explain>trong ảnh có một hình vuông</explain>

So the model learns to write the three tags in order, in the task's words, and to stop; it does not learn what the
pictures show, nor which answer or explanation goes with which question. Whatever it gets right about them after
the demo, the rewards taught it.

The loss is the completions' mean negative log-likelihood, computed by the product's own adapter
(``completion_logps``: shared image and prompt encoding, chunked head), so the warm-up runs the code path training
runs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_demo.models import _save
from grpo_demo.scenes import make_dataset, render_scene
from grpo_lightning.algorithms import gold_nll
from grpo_lightning.rollout import encode_completions
from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, THINK_TAG, format_solution, render_prompt, tagged

#: The cold start's scenes come from the demo seed plus this, so none of its pictures is in the demo dataset.
SCENE_SEED_OFFSET = 7


@dataclass(frozen=True)
class ColdStart:
    """How long and how hard the warm-up trains: ``steps`` AdamW steps of ``batch_size`` examples at ``lr``, drawn
    from ``num_examples`` examples. The defaults bring the tiny demo InternVL (2 layers, 176k parameters) to the
    strict format in about 70 % of its samples at temperature 1, in about 10 s on 2 CPU cores."""

    steps: int = 120
    batch_size: int = 16
    lr: float = 3e-3
    num_examples: int = 256


def format_examples(seed: int, num_examples: int) -> list[dict[str, Any]]:
    """The warm-up examples: picture, prompt and a tagged completion whose content is drawn from other examples.

    Each completion is ``<think>Trong ảnh có N hình.</think>`` followed by :func:`format_solution` of an answer and
    the shortest explanation, where N, the answer and the explanation each come from a random other example.
    """
    splits, scenes = make_dataset(seed=seed + SCENE_SEED_OFFSET, num_train=num_examples, num_val=0)
    records = splits["train"]
    answers = sorted({record["answer"] for record in records})
    rng = random.Random(seed)
    examples = []
    for record in records:
        count = len(scenes[rng.choice(records)["image_name"]].shapes)
        answer = rng.choice(answers)
        explanation = min(rng.choice(records)["explanation"], key=len)
        examples.append(
            {
                "image": render_scene(scenes[record["image_name"]]),
                "prompt": render_prompt(DEFAULT_PROMPT_TEMPLATE, record["question"]),
                "completion": tagged(THINK_TAG, f"Trong ảnh có {count} hình.") + format_solution(answer, explanation),
            }
        )
    return examples


def cold_start(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0, options: ColdStart | None = None
) -> list[float]:
    """Warm the checkpoint at ``model_dir`` up on :func:`format_examples` and save it (model and processor) at
    ``out_dir``; returns the loss of each step. Deterministic for a seed on a given machine and thread count."""
    from transformers import AutoModelForImageTextToText

    from grpo_lightning.adapters import load_adapter

    options = options or ColdStart()
    adapter, _ = load_adapter(str(model_dir))
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    examples = format_examples(seed, options.num_examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.0)
    eos_id = adapter.eos_token_ids(model)[0]
    order = random.Random(seed)
    losses = []
    for _ in range(options.steps):
        batch = order.sample(examples, options.batch_size)
        prompts = adapter.prepare_prompts([e["image"] for e in batch], [e["prompt"] for e in batch])
        completion_ids, mask = encode_completions(adapter.tokenizer, [e["completion"] for e in batch], eos_id)
        logps, _ = adapter.completion_logps(model, prompts, list(range(len(batch))), completion_ids, mask)
        loss = gold_nll(logps, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    _save(model.eval(), adapter.processor, Path(out_dir))
    return losses
