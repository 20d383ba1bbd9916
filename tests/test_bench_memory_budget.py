"""The memory-budget benchmark's accounting, on one real GRPO step of the recipe's settings at a tiny shape.

The step runs ``benchmarks.bench_memory_budget.run_step`` exactly as the InternVL3-1B measurement does (the recipe's
G, micro-batch, gradient checkpointing, reference model, bf16-mixed, 640x480 pictures tiled at ``max_patches: 6``),
with ``build_tiny_internvl``'s default shape and 6-token completions, so it takes seconds. The checks: the measured
bytes are what the tensors' counts and element sizes say, the computed parts follow their formulas from the model's
config, and every printed sum and peak is the formula of its printed parts.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re

import pytest
import yaml

from benchmarks import bench_memory_budget as bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMPLETION_LENGTH = 6
DEVICES = [1, 8]

#: Two records in ViVQA-X's published schema (the benchmark reads the first ``data.batch_size`` of a split).
RECORDS = [
    {
        "question": "Con mèo đang nằm ở đâu?",
        "image_id": "262284",
        "image_name": "COCO_val2014_000000262284.jpg",
        "explanation": ["nó nằm trên ghế sofa", "con mèo ở trên ghế", "ghế sofa có một con mèo"],
        "answer": "ghế sofa",
        "question_id": "262284001",
        "question_type": "where is the",
        "answer_type": "other",
    },
    {
        "question": "Trời có mưa không?",
        "image_id": "393271",
        "image_name": "COCO_val2014_000000393271.jpg",
        "explanation": ["mọi người cầm ô", "mặt đường ướt", "có người đang che ô"],
        "answer": "có",
        "question_id": "393271001",
        "question_type": "is it",
        "answer_type": "yes/no",
    },
]


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("memory-budget")
    records = work_dir / "ViVQA-X_val.json"
    records.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    settings = bench.recipe_settings(completion_length=COMPLETION_LENGTH)
    args = argparse.Namespace(records=str(records), threads=1)
    measured = bench.run_step(args, settings, {}, work_dir)
    clip = bench.clip_reward_bytes()
    config = json.loads((work_dir / "model" / "config.json").read_text(encoding="utf-8"))
    return {
        "settings": settings,
        "measured": measured,
        "clip": clip,
        "config": config,
        "lines": bench.report(measured, settings, clip, DEVICES),
    }


def test_recipe_settings_come_from_the_recipe_with_overrides():
    recipe = yaml.safe_load(bench.RECIPE.read_text(encoding="utf-8"))["model"]
    settings = bench.recipe_settings()
    assert settings.num_generations == recipe["sampling"]["num_generations"]
    assert settings.completion_length == recipe["sampling"]["max_completion_length"]
    assert settings.micro_batch_size == recipe["loss"]["micro_batch_size"]
    assert settings.image == recipe["image"]
    changed = bench.recipe_settings(micro_batch_size=2, max_patches=4)
    assert (changed.micro_batch_size, changed.image["max_patches"]) == (2, 4)
    assert changed.num_generations == settings.num_generations


def test_the_step_runs_the_recipe_shape(budget):
    measured, settings = budget["measured"], budget["settings"]
    assert measured["completion_tokens"] == [COMPLETION_LENGTH] * settings.num_sequences
    assert measured["image_tiles"] == [7] * settings.num_prompts  # 640x480 at max_patches 6: 3x2 grid + thumbnail
    assert measured["question_ids"] == [r["question_id"] for r in RECORDS]
    assert len(measured["micro_batches"]) == -(-settings.num_sequences // settings.micro_batch_size)
    assert set(measured["phases"]) >= {"rollout", "reference", "update"}
    assert all(value >= 0 for value in [*measured["phases"].values(), *measured["micro_batches"], measured["head"]])


def test_measured_bytes_are_counts_times_element_sizes(budget):
    measured = budget["measured"]
    assert measured["parameter_element_size"] == 2  # the recipe's bf16
    assert measured["policy_bytes"] == measured["policy_parameters"] * 2
    assert measured["reference_bytes"] == measured["reference_parameters"] * 2
    assert measured["reference_parameters"] == measured["policy_parameters"]
    assert measured["trainable_parameters"] == measured["policy_parameters"]  # full fine-tuning
    assert measured["gradient_bytes"] == measured["trainable_parameters"] * 2
    # AdamW keeps exp_avg and exp_avg_sq in the weights' dtype and a float32 step per parameter tensor
    assert (
        measured["optimizer_state_bytes"]
        == 2 * 2 * measured["trainable_parameters"] + 4 * measured["trainable_tensors"]
    )


def test_computed_parts_follow_the_model_config(budget):
    measured, settings, config = budget["measured"], budget["settings"], budget["config"]
    text, vision = config["text_config"], config["vision_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    longest = max(measured["prompt_tokens"])
    parts = bench.computed_parts(measured, settings)
    kv = text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * 2
    assert parts["kv_cache"] == kv * settings.num_sequences * (longest + COMPLETION_LENGTH)
    tokens_per_tile = (vision["image_size"][0] // vision["patch_size"][0]) ** 2 + 1  # patches + class token
    assert parts["vision_checkpoints"] == vision["num_hidden_layers"] * 7 * tokens_per_tile * vision["hidden_size"] * 2
    host = bench.host_offload_bytes(measured["trainable_parameters"], len(measured["micro_batches"]))
    assert sum(host.values()) == 18 * measured["trainable_parameters"]
    count, clip_bytes = budget["clip"]
    assert clip_bytes == 4 * count


def test_projection_is_the_formula_of_its_parts(budget):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    measured, settings, clip = budget["measured"], budget["settings"], budget["clip"]
    defaults = inspect.signature(DeepSpeedStrategy.__init__).parameters
    reduce, gather = defaults["reduce_bucket_size"].default, defaults["allgather_bucket_size"].default
    for devices in DEVICES:
        result = bench.projection(measured, settings, clip[1], devices)
        resident = measured["policy_bytes"] + measured["reference_bytes"] + clip[1]
        resident += measured["largest_trainable_parameter"] * 2
        update = result["phases"]["update"]
        assert update[f"bf16 gradients / {devices}"] == measured["gradient_bytes"] // devices
        assert update["DeepSpeed reduce and allgather buckets"] == reduce * 2 * 2 + gather * 2
        assert result["sums"]["sampling"] == resident + measured["phases"]["rollout"]
        assert result["sums"]["reference"] == resident + measured["phases"]["reference"]
        expected_update = resident + measured["gradient_bytes"] // devices + reduce * 4 + gather * 2
        expected_update += max(measured["micro_batches"][1:])
        assert result["sums"]["update"] == expected_update
        largest = max(result["sums"].values())
        assert result["peak"] == int(largest * (1 + bench.FRAGMENTATION)) + bench.CUDA_CONTEXT_BYTES


def test_printed_sums_and_peaks_match_their_printed_parts(budget):
    lines, measured, settings, clip = budget["lines"], budget["measured"], budget["settings"], budget["clip"]
    text = "\n".join(lines)
    assert "formula: peak = max(sampling, reference, update) x (1 + fragmentation) + context" in text
    phase_lines = [line for line in lines if re.match(r"\s+(sampling|reference|update) = .* GiB$", line)]
    assert len(phase_lines) == 3 * len(DEVICES)
    for line in phase_lines:
        terms, total = line.split(" = ", 1)[1].rsplit(" = ", 1)
        values = [float(v) for v in re.findall(r" (\d+\.\d\d)(?= \+|$)", " " + terms)]
        assert len(values) == terms.count(" + ") + 1
        assert abs(sum(values) - float(total.split()[0])) <= 0.005 * (len(values) + 1)
    for devices in DEVICES:
        peak = bench.projection(measured, settings, clip[1], devices)["peak"]
        assert f"projected_peak_gib_{devices}={peak / bench.GIB:.3f}" in lines
    peak_lines = [line for line in lines if line.strip().startswith("peak = ")]
    for line, devices in zip(peak_lines, DEVICES, strict=True):
        phase, total, factor, context, result = re.search(
            r"peak = (\w+) (\d+\.\d\d) x (\d+\.\d\d) \+ (\d+\.\d\d) = (\d+\.\d\d) GiB", line
        ).groups()
        assert abs(float(total) * float(factor) + float(context) - float(result)) <= 0.01
        assert phase == bench.projection(measured, settings, clip[1], devices)["largest"]
