"""Evaluation records gathered from processes: the distributed sampler's padding copies go, nothing else does.

The data module refuses repeated sample ids (tests/test_data.py) and the scoring refuses a question id twice
(tests/test_evaluate.py); between them, ``EvaluationMixin._gathered_records`` must drop exactly the samples that
Lightning's DistributedSampler repeats to give every process as many.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from grpo_lightning.evaluation import EvaluationMixin

QUESTIONS = ["Con mèo màu gì?", "Có mấy con chó?", "Trời có mưa không?", "Ai đang cầm ô?", "Bánh màu gì?"]


def prediction(index: int) -> dict:
    return {"question_id": f"q{index}", "question": QUESTIONS[index % len(QUESTIONS)], "pred_ans": "có"}


def evaluator(world_size: int, records: list[dict]) -> EvaluationMixin:
    module = EvaluationMixin()
    module.trainer = SimpleNamespace(world_size=world_size)
    module._eval_records = records
    return module


@pytest.mark.parametrize(("num_samples", "world_size"), [(5, 2), (7, 3), (3, 4), (8, 4), (1, 2)])
def test_gathering_drops_exactly_the_distributed_samplers_padding(monkeypatch, num_samples, world_size):
    dataset = list(range(num_samples))
    per_rank = [
        [prediction(i) for i in DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)]
        for rank in range(world_size)
    ]
    padded = sum(len(part) for part in per_rank)
    assert padded == world_size * -(-num_samples // world_size)  # every rank as many: the first samples again

    def all_gather_object(gathered: list, records: list) -> None:
        gathered[:] = per_rank

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    records = evaluator(world_size, per_rank[0])._gathered_records()
    assert sorted(r["question_id"] for r in records) == sorted(f"q{i}" for i in range(num_samples))


def test_one_process_hands_on_its_records_untouched():
    """No padding without processes to pad for: a repeat there is refused by the scoring, not dropped here."""
    records = [prediction(0), prediction(1), prediction(0)]
    assert evaluator(1, records)._gathered_records() == records
