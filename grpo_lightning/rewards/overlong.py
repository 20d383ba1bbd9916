"""DAPO's soft overlong punishment: a length penalty that grows linearly over the last ``buffer`` tokens of the budget.

DAPO (Yu et al. 2025, arXiv 2503.14476, sec. 3.4, eq. 13), with L = ``max_length`` and ``buffer`` = L_cache::

    R(y) = 0                              if |y| <= L - buffer
           ((L - buffer) - |y|) / buffer  if L - buffer < |y| <= L
           -1                             if |y| > L

|y| is the completion's length in tokens (up to and including its EOS), which :class:`GRPOModule` passes every reward
as the field ``completion_length``; L defaults to the sampling budget, passed as ``max_completion_length``. Add it to
the other rewards (``model.rewards.funcs: [..., overlong]``) so long answers lose a little before they are cut off.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpo_lightning.errors import ConfigError


class OverlongReward:
    """The soft overlong penalty, in [-1, 0], from token counts (the text itself is not read).

    Args:
        buffer: L_cache, the tokens before the limit over which the penalty grows from 0 to -1 (at least 1).
        max_length: L, the length that earns -1 (None: ``model.sampling.max_completion_length``, the budget the
            completions were sampled with).
    """

    def __init__(self, buffer: int | None = None, max_length: int | None = None) -> None:
        if buffer is None:
            raise ConfigError(
                "reward 'overlong' needs its buffer, the tokens before the length limit over which the penalty grows "
                "from 0 to -1: set model.rewards.kwargs.overlong.buffer (for example a quarter of max_length)."
            )
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ConfigError(f"reward 'overlong': buffer must be a whole number of tokens >= 1, not {buffer!r}.")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise ConfigError(f"reward 'overlong': max_length must be a whole number of tokens, not {max_length!r}.")
        if max_length is not None and buffer > max_length:
            raise ConfigError(f"reward 'overlong': buffer ({buffer}) is above max_length ({max_length}).")
        self.buffer = buffer
        self.max_length = max_length

    def __call__(
        self,
        completions: list[str],
        solution: list[str] | None = None,
        completion_length: Sequence[int] | None = None,
        max_completion_length: Sequence[int] | None = None,
        **kwargs,
    ) -> list[float | None]:
        if completion_length is None:
            raise ValueError(
                "reward 'overlong' needs the field completion_length (each completion's length in tokens), which "
                "the trainer passes; a caller of its own must pass it too"
            )
        if len(completion_length) != len(completions):
            raise ValueError(f"{len(completion_length)} completion_length values for {len(completions)} completions")
        scores = []
        for j, length in enumerate(completion_length):
            limit = self.max_length
            if limit is None:
                if max_completion_length is None:
                    raise ValueError(
                        "reward 'overlong' has no max_length and no field max_completion_length to default to; set "
                        "model.rewards.kwargs.overlong.max_length"
                    )
                limit = int(max_completion_length[j])
            if self.buffer > limit:
                raise ValueError(f"reward 'overlong': buffer ({self.buffer}) is above the length limit ({limit})")
            scores.append(soft_overlong_penalty(int(length), limit, self.buffer))
        return scores


def soft_overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO eq. 13 for one completion of ``length`` tokens (see the module docstring)."""
    expected_limit = max_length - buffer
    if length <= expected_limit:
        return 0.0
    if length <= max_length:
        return (expected_limit - length) / buffer
    return -1.0


__all__ = ["OverlongReward", "soft_overlong_penalty"]
