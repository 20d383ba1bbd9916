"""Supervision from the gold solution (``loss.sft_coef``), a part of the update stage: the gold completions of a
step's prompts, which ride along in the policy passes of the micro-batches that hold their prompts.

A prompt's gold completion is scored in the pass of the micro-batch holding the prompt's first sampled completion,
as one more row that continues from the prompt: the shared-prompt pass prefills each distinct prompt of its rows
once, so the gold row needs no image or prompt encoding of its own (:meth:`GoldSupervision.rows`); it costs its
tokens, and a gold longer than the micro-batch's sampled completions widens the pass to its length. Its log-probs are
at temperature 1 (the model's own distribution, whatever ``sampling.temperature`` the rollout was drawn at) and its
term is :func:`~grpo_lightning.algorithms.gold_nll` over the whole batch's gold tokens, so that the micro-batches'
terms add up to the batch's token mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.algorithms import gold_nll, sft_coef_at
from grpo_lightning.errors import ConfigError
from grpo_lightning.rollout import Rollout, encode_completions

if TYPE_CHECKING:
    from grpo_lightning.config import LossConfig


@dataclass(frozen=True)
class GoldRows:
    """The gold completions one micro-batch scores.

    Attributes:
        ids: (R, L) their tokens, right-padded.
        mask: (R, L) their tokens, EOS included.
        prompt_index: index into the rollout's prompts of each.
    """

    ids: Tensor
    mask: Tensor
    prompt_index: list[int]


class GoldSupervision:
    """The gold completions of a step's prompts and the weight of their term.

    Args:
        ids, mask: (B, L) each prompt's gold completion (:func:`~grpo_lightning.rollout.encode_completions`).
        micro_batches: the update's micro-batches of sampled completions.
        prompt_index: (N,) the prompt of each sampled completion.
    """

    def __init__(self, ids: Tensor, mask: Tensor, micro_batches: Sequence[slice], prompt_index: Tensor) -> None:
        self.ids, self.mask = ids, mask
        self.num_tokens = mask.sum().clamp_min(1).float()
        first_row: dict[int, int] = {}
        for row, prompt in enumerate(prompt_index.tolist()):
            first_row.setdefault(prompt, row)
        self.prompts_of = [[p for p, row in first_row.items() if mb.start <= row < mb.stop] for mb in micro_batches]

    @classmethod
    def of(
        cls,
        config: LossConfig,
        tokenizer: Any,
        eos_token_id: int,
        rollout: Rollout,
        solutions: Sequence[str] | None,
        micro_batches: Sequence[slice],
        suppressed_ids: Sequence[int] = (),
    ) -> GoldSupervision | None:
        """The step's gold supervision (None with ``loss.sft_coef`` 0); ``suppressed_ids``: the tokens the policy's
        log-probs give -inf (the adapter's ``suppressed_token_ids``), refused in a gold completion."""
        if not config.sft_coef:
            return None
        if solutions is None:
            raise ConfigError(
                "loss.sft_coef trains on each prompt's gold solution, and the training batches carry no 'solution' "
                "field: read the data with grpo_lightning.data.ViVQAXDataModule, or set loss.sft_coef: 0."
            )
        if len(solutions) != len(rollout.prompts):
            raise ValueError(f"{len(solutions)} gold solutions for a rollout of {len(rollout.prompts)} prompts")
        ids, mask = encode_completions(tokenizer, solutions, eos_token_id)
        suppressed = torch.isin(ids, torch.tensor(list(suppressed_ids), dtype=ids.dtype)) & (mask != 0)
        bad = [text for text, row in zip(solutions, suppressed.any(-1).tolist(), strict=True) if row]
        if bad:
            raise ConfigError(
                f"loss.sft_coef: the gold solution {bad[0]!r} contains a special token the policy never writes (an "
                "image placeholder, say), whose log-prob is -inf: remove it from the sample's answer or explanation, "
                "or set loss.sft_coef: 0."
            )
        device = rollout.completion_ids.device
        return cls(ids.to(device), mask.to(device), micro_batches, rollout.prompt_index)

    @staticmethod
    def coef(config: LossConfig, step: int) -> float:
        """The term's weight at optimizer step ``step`` (:func:`~grpo_lightning.algorithms.sft_coef_at`)."""
        return sft_coef_at(config.sft_coef, config.sft_decay_steps, step)

    def rows(self, index: int) -> GoldRows | None:
        """The gold completions micro-batch ``index`` scores (None: none of its prompts starts there)."""
        prompts = self.prompts_of[index]
        if not prompts:
            return None
        width = int(self.mask[prompts].sum(-1).max())
        return GoldRows(self.ids[prompts, :width], self.mask[prompts, :width], prompts)

    def term(self, logps: Tensor, rows: GoldRows, coef: float) -> tuple[Tensor, Tensor]:
        """The micro-batch's share of ``coef`` times the batch's gold NLL, and of the NLL itself (detached)."""
        nll = gold_nll(logps, rows.mask.to(logps.device), self.num_tokens.to(logps.device))
        return coef * nll, nll.detach()


def with_gold_rows(
    ids: Tensor, mask: Tensor, prompt_index: list[int], gold: GoldRows, pad_token_id: int
) -> tuple[Tensor, Tensor, list[int]]:
    """The sampled completions' rows and then the gold ones, right-padded to one width."""
    width = max(ids.shape[1], gold.ids.shape[1])

    def padded(values: Tensor, fill: int) -> Tensor:
        return torch.nn.functional.pad(values, (0, width - values.shape[1]), value=fill)

    gold_ids, gold_mask = gold.ids.to(ids.device), gold.mask.to(mask.device, mask.dtype)
    stacked_ids = torch.cat([padded(ids, pad_token_id), padded(gold_ids, pad_token_id)])
    stacked_mask = torch.cat([padded(mask, 0), padded(gold_mask, 0)])
    return stacked_ids, stacked_mask, [*prompt_index, *gold.prompt_index]


__all__ = ["GoldRows", "GoldSupervision", "with_gold_rows"]
