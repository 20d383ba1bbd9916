"""Asynchronous rollouts (``sampling.async_rollouts``): the engine samples the rollouts of the next ``max_staleness``
steps while the trainer scores, takes log-probs and updates on this one.

The pipeline, at the start of step t (the trainer holds the weights of optimizer step t):

1. the weights of step t go to the engine without waiting for it (:meth:`RolloutEngine.bring_weights_to` with
   ``wait=False``: an engine still sampling loads them when it is done);
2. the next K batches of the training stream (:meth:`ResumableDataLoader.upcoming`, which neither takes nor skips
   them) that have no rollout on its way yet are sent to be sampled with those weights, each with its requests'
   seeds drawn now from torch's global generator;
3. the step's own batch takes its rollout: the one sent for it in an earlier step (sampled with that step's weights:
   its staleness is the steps between), or, when none was (the first step, an epoch's first step), one sampled now.

So with K = 1 the rollout of step t+1 is sampled with the weights of step t while step t updates; with K = 0 nothing
is sampled ahead and the step is the synchronous one, in the same order of random draws. Dynamic sampling's refill
rounds take the stream's next batches, which are the ones on their way: a refill takes its rollout as the step's own
batch does. Sampling ahead stops at an epoch's end: the next epoch's first step samples its own rollout.

Off-policy math: a rollout's completions come from the weights of step ``version``; the trainer keeps a copy of the
trainable weights of every step whose rollouts are not trained yet (:class:`WeightVersions`: the LoRA adapters alone
with LoRA, every weight that trains without), and the ratio's old log-probs of a stale completion are the trainer's
own pass under them (:meth:`~grpo_lightning.stages.update.PolicyUpdate.old_logps`). That is the definition the
synchronous step already uses (the trainer's log-probs under the weights that sampled), so the ratio measures how far
the policy moved since, and the engines' mismatch correction (``vllm.importance_sampling_*``, relative to these old
log-probs) stays the mismatch of the engines alone. The engine's own log-probs are not the old log-probs: they hold
that mismatch too, and would differ from the synchronous step's at staleness 0.

Checkpoints: a checkpoint records the rollouts on their way at its step's end: each batch's place in the stream,
its sample ids, the requests' seeds and the weights version, and holds the copies of those weights. A resumed run
sends them again, under those weights and with those seeds, before its first step draws anything, so it samples what
the uninterrupted run sampled (vLLM samples a request with its seed alone) and its random streams go on alike.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from grpo_lightning.distributed import every_process
from grpo_lightning.engines.base import SampledCompletions
from grpo_lightning.errors import ConfigError

if TYPE_CHECKING:
    from grpo_lightning.adapters import PromptBatch
    from grpo_lightning.stages.rollout import RolloutStage

#: The checkpoint entry of the rollouts on their way.
ASYNC_STATE_KEY = "async_rollouts"


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The weights that train, by name: what a weights version holds."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class WeightVersions:
    """CPU copies of the trainable weights of the optimizer steps whose weights sampled rollouts not trained yet."""

    def __init__(self) -> None:
        self.saved: dict[int, dict[str, Tensor]] = {}

    def keep(self, version: int, model: torch.nn.Module) -> None:
        if version not in self.saved:
            self.saved[version] = {name: p.detach().to("cpu", copy=True) for name, p in trainable(model)}

    def keep_only(self, versions: set[int]) -> None:
        for version in set(self.saved) - versions:
            del self.saved[version]

    @contextlib.contextmanager
    def applied(self, version: int, model: torch.nn.Module) -> Iterator[None]:
        """``model`` with the trainable weights of ``version`` for the block, its own after (bit for bit)."""
        saved = self.saved[version]
        weights = dict(trainable(model))
        if set(weights) != set(saved):
            raise RuntimeError(f"weights version {version} holds other weights than the policy's trainable ones")
        current = {name: p.detach().clone() for name, p in weights.items()}
        try:
            with torch.no_grad():
                for name, p in weights.items():
                    p.copy_(saved[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in weights.items():
                    p.copy_(current[name])


@dataclass(eq=False)
class InFlight:
    """A rollout sent to the engine for a batch of the stream, not trained yet."""

    position: tuple[int, int]  # (epoch, index of the batch in it)
    ids: list[Any] | None  # the batch's sample ids (None: it has none)
    version: int  # the optimizer step whose weights sample it
    seeds: list[int]  # its requests' seeds, one per prompt
    prompts: PromptBatch
    prompt_index: Tensor
    pending: Any  # the engine's handle

    def record(self) -> dict[str, Any]:
        return {"position": list(self.position), "ids": self.ids, "version": self.version, "seeds": self.seeds}


@dataclass
class TakenRollout:
    """What a batch's rollout came back with: the completions, the weights version that sampled them and how long
    the trainer waited for them."""

    sampled: SampledCompletions
    prompts: PromptBatch
    prompt_index: Tensor
    version: int
    waited: float


class AsyncRollouts:
    """The rollouts on their way for ``stage`` (a :class:`~grpo_lightning.stages.rollout.RolloutStage`), ``k`` steps
    ahead at most."""

    def __init__(self, stage: RolloutStage, k: int) -> None:
        self.stage, self.k = stage, k
        self.on_the_way: collections.deque[InFlight] = collections.deque()
        self.taken: list[InFlight] = []  # taken by the step that runs, not trained yet
        self.versions = WeightVersions()
        self.restored: list[dict[str, Any]] = []  # a checkpoint's records, sent again at the first step
        self.step_stats: list[TakenRollout] = []

    # ------------------------------------------------------------------------------------------ the step
    def take(self, batch: dict[str, list[Any]], num_generations: int) -> TakenRollout:
        """The rollout of ``batch``, the batch the training stream handed out last, and the next batches sent."""
        stage, module = self.stage, self.stage.module
        loader = module.trainer.train_dataloader
        if not callable(getattr(loader, "upcoming", None)):
            raise ConfigError(
                "sampling.async_rollouts samples the training stream's next batches ahead of their steps, from a "
                f"grpo_lightning.data.ResumableDataLoader (ViVQAXDataModule's), not {type(loader).__name__}; use that "
                "data module or set model.sampling.async_rollouts: false."
            )
        epoch, done = loader.position
        position = (epoch, done - 1)
        if self.restored:
            self._send_restored(loader, batch, position, num_generations)
        entry = None
        if self.on_the_way and self.on_the_way[0].position == position:
            entry = self.on_the_way.popleft()
            self.taken.append(entry)  # the step's from now on: the checkpoint of a step that fails here keeps it
            _check_ids(entry.ids, entry.position, batch)
        elif self.on_the_way:
            raise RuntimeError(
                f"the rollouts on their way are for batches {[e.position for e in self.on_the_way]}, and the step's "
                f"batch is {position}"
            )
        step = module.global_step
        stage.bring_engine_weights(wait=False)
        if entry is None:  # none was sent for it: sampled now, with the step's weights
            entry = self._send(batch, position, step, num_generations)
            self.taken.append(entry)
        ahead = loader.upcoming(self.k)
        for index, upcoming in enumerate(ahead[len(self.on_the_way) :], start=done + len(self.on_the_way)):
            upcoming = module.trainer.strategy.batch_to_device(upcoming)
            self.on_the_way.append(self._send(upcoming, (epoch, index), step, num_generations))
        start = time.perf_counter()
        sampled = stage.engine.collect(entry.pending)
        waited = time.perf_counter() - start
        self._keep_needed_versions()
        taken = TakenRollout(sampled, entry.prompts, entry.prompt_index, entry.version, waited)
        self.step_stats.append(taken)
        return taken

    def _send(
        self, batch: dict[str, list[Any]], position: tuple[int, int], version: int, num_generations: int,
        seeds: list[int] | None = None,
    ) -> InFlight:  # fmt: skip
        stage, module = self.stage, self.stage.module
        prompts = module.adapter.prepare_prompts(batch["image"], batch["prompt"]).to(module.device)
        prompt_index = torch.arange(len(prompts)).repeat_interleave(num_generations)
        pending = stage.engine.submit(
            module.model, module.adapter, prompts, batch["image"], prompt_index.tolist(), stage.sampling, True, seeds
        )
        if self.k:  # with K = 0 every rollout trains in the step that sends it, under the weights that sampled it
            self.versions.keep(version, module.model)
        return InFlight(position, batch.get("id"), version, list(pending.seeds), prompts, prompt_index, pending)

    def _send_restored(
        self, loader: Any, batch: dict[str, list[Any]], position: tuple[int, int], num_generations: int
    ) -> None:
        """A resumed run's first step: the checkpoint's rollouts on their way, sent again as they were sent."""
        module = self.stage.module
        ahead = [batch, *loader.upcoming(len(self.restored) - 1)]
        for offset, (record, upcoming) in enumerate(zip(list(self.restored), ahead, strict=False)):
            expected = (position[0], position[1] + offset)
            if tuple(record["position"]) != expected:
                raise ConfigError(
                    f"the checkpoint's rollouts on their way are for batch {record['position']} (epoch, batch) of the "
                    f"training stream on, and the resumed run is at batch {list(expected)}: the data, the batch size "
                    "or the number of processes changed since the checkpoint was saved. Resume with the settings the "
                    "run was started with."
                )
            _check_ids(record["ids"], expected, upcoming)
            upcoming = module.trainer.strategy.batch_to_device(upcoming)
            with self.versions.applied(record["version"], module.model):
                self.stage.bring_engine_weights(wait=False, step=record["version"])
                entry = self._send(upcoming, expected, record["version"], num_generations, record["seeds"])
            self.on_the_way.append(entry)
            self.restored.pop(0)  # sent again: a checkpoint saved from now on has it on its way

    def _keep_needed_versions(self) -> None:
        self.versions.keep_only({e.version for e in (*self.taken, *self.on_the_way)})

    def trained(self) -> None:
        """The step's rollouts are trained (its optimizer steps are done)."""
        self.taken.clear()
        self._keep_needed_versions()

    def stats(self, versions: Tensor, step: int, idle: float) -> dict[str, Tensor]:
        """The step's ``async/*`` statistics: the trained completions' mean and largest staleness, the share of the
        engine's sampling that ran while the trainer did something else, the seconds the trainer waited for rollouts
        and those the engine waited for requests (weights and prompts)."""
        taken, self.step_stats = self.step_stats, []
        staleness = (step - versions).float()
        waited = sum(t.waited for t in taken)
        busy = sum(t.sampled.engine_seconds or 0.0 for t in taken)
        overlap = max(0.0, 1.0 - waited / busy) if busy > 0 else 0.0
        return {
            "async/staleness": staleness.mean(),
            "async/staleness_max": staleness.max(),
            "async/overlap_fraction": torch.tensor(min(overlap, 1.0)),
            "async/trainer_wait": torch.tensor(waited),
            "async/engine_wait": torch.tensor(idle),
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self, step: int, world_size: int) -> dict[str, Any]:
        """The rollouts on their way at the end of optimizer step ``step`` (those sent before it, not trained: a
        checkpoint saved while a step fails is of the step before), every process's in rank order (a collective
        under data parallelism), and the weights that sample them (the same in every process)."""
        entries = [e for e in (*self.taken, *self.on_the_way) if e.version < step]
        records = [e.record() for e in entries] + [dict(record) for record in self.restored]
        versions = {record["version"] for record in records}
        return {
            "in_flight": every_process(records, world_size),
            "versions": {v: dict(self.versions.saved[v]) for v in sorted(versions)},
        }

    def load(self, state: dict[str, Any], world_size: int, rank: int) -> None:
        """Take back a checkpoint's rollouts on their way (this process's); :meth:`take` sends them again. Saved by
        another number of processes, whose batches were not this run's: none is sent again, and the batches they
        were for sample their rollouts with the current weights (warned of)."""
        self.reset()
        per_process = state["in_flight"]
        if len(per_process) != world_size:
            rank_zero_warn(
                f"The checkpoint was saved by {len(per_process)} processes and this run has {world_size}: the "
                "rollouts it had on their way are not sent again, and their batches are sampled with the weights "
                "the run resumes with (an uninterrupted run would have sampled them with earlier ones)."
            )
            return
        self.restored = [dict(record) for record in per_process[rank]]
        self.versions.saved = {int(v): dict(weights) for v, weights in state["versions"].items()}

    def reset(self) -> None:
        """Nothing on its way, no weights kept: at the end of a fit (the rollouts sampled past its last step are
        dropped) and before a checkpoint's are taken back."""
        self.on_the_way.clear()
        self.taken.clear()
        self.restored = []
        self.step_stats = []
        self.versions.saved = {}


def _check_ids(sent_for: list[Any] | None, position: tuple[int, int], batch: dict[str, list[Any]]) -> None:
    """Refuse a batch whose samples are not those its rollout was sent for (the data changed under a resumed run)."""
    ids = batch.get("id")
    if sent_for is not None and ids is not None and list(sent_for) != list(ids):
        raise ConfigError(
            f"the rollout sent for batch {list(position)} of the training stream was for samples "
            f"{list(sent_for)[:4]}, and that batch now holds {list(ids)[:4]}: the training data or its order changed "
            "since the checkpoint was saved. Resume with the data the run was started with."
        )


__all__ = ["ASYNC_STATE_KEY", "AsyncRollouts", "InFlight", "TakenRollout", "WeightVersions", "trainable"]
