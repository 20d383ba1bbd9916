"""The KL reference: a frozen copy of the starting policy, or with LoRA the policy itself with its adapters disabled;
its sync (TR-DPO) and its part of checkpoints.

Reference sync: every ``loss.ref_sync_steps`` optimizer steps the frozen reference moves toward the policy,
``reference = alpha * policy + (1 - alpha) * reference`` (Gorbatovski et al. 2024, arXiv 2404.09656; TRL's
``sync_ref_model``), and checkpoints carry the moved reference so that a resumed run continues exactly.

:class:`ReferencePolicy` is a component of :class:`~grpo_lightning.module.GRPOModule`, which calls it from its own
hooks (set-up, batch start and end, checkpoint save and load, training start): the component owns no Lightning hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from grpo_lightning.config import LoRAConfig, LossConfig
from grpo_lightning.errors import ConfigError

#: Checkpoint keys: the reference model's weights (saved once they have moved away from the base weights), and whether
#: the checkpoint was saved after the optimizer step that reached a sync but before the sync (see
#: :meth:`ReferencePolicy.save_state`).
REFERENCE_STATE_KEY = "reference_state_dict"
REFERENCE_SYNC_PENDING_KEY = "reference_sync_pending"


class ReferencePolicy:
    """The KL reference of a fit, and its sync.

    Args:
        loss: the objective's options (``beta``, ``ref_sync_steps``, ``ref_sync_alpha``).
        lora: the LoRA options: with adapters the reference is the base model, the policy with them disabled.
        base: the base weights' name (for messages).
    """

    def __init__(self, loss: LossConfig, lora: LoRAConfig, base: str) -> None:
        self.loss, self.lora, self.base = loss, lora, base
        self.model: torch.nn.Module | None = None  # the frozen copy (full fine-tuning with beta > 0)
        self.steps_before_batch: int | None = None  # the optimizer steps before the running batch
        self.moved = False  # the copy's weights left the base weights (a sync, or a restore)
        self.saved: tuple[dict[str, Tensor], bool] | None = None  # a checkpoint's weights, until training starts

    @property
    def needs_copy(self) -> bool:
        """Whether the reference is a model of its own: a KL term (``beta > 0``) under full fine-tuning."""
        return self.loss.beta > 0 and self.lora.r == 0

    @contextlib.contextmanager
    def __call__(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The reference for ``policy``: the frozen copy, or with LoRA the policy itself with its adapters disabled."""
        if self.lora.r > 0:
            with policy.disable_adapter():
                yield policy
        else:
            yield self.model

    def check(self, strategy: Any) -> None:
        """Refuse ``loss.ref_sync_steps`` where there is no reference of its own to update (before the fit starts).

        With LoRA the reference is the base model itself (the policy with its adapters disabled), so mixing the policy
        into it would move the policy too; under DeepSpeed ZeRO-3 the policy's weights are sharded; with ``beta: 0``
        there is no reference.
        """
        if not self.loss.ref_sync_steps:
            return
        if self.lora.r > 0:
            raise ConfigError(
                "loss.ref_sync_steps needs full fine-tuning: with LoRA (lora.r > 0) the KL reference is the base model "
                "itself, the policy with its adapters disabled, and mixing the policy into it would change the policy "
                "too. Set loss.ref_sync_steps to 0, or lora.r to 0."
            )
        if getattr(strategy, "zero_stage_3", False):
            raise ConfigError(
                "loss.ref_sync_steps cannot mix the policy into the reference under DeepSpeed ZeRO-3, which shards the "
                "policy's weights across processes; use ZeRO-2 (the recipe's), or set loss.ref_sync_steps to 0."
            )
        if self.loss.beta <= 0:
            raise ConfigError("loss.ref_sync_steps needs the reference model, which loss.beta > 0 loads.")

    # ------------------------------------------------------------------------------------------ sync
    def sync_due(self, steps_after: int) -> bool:
        """Whether the batch that began at :attr:`steps_before_batch` steps crossed a multiple of ``ref_sync_steps``
        (a batch takes ``num_iterations`` optimizer steps)."""
        every = self.loss.ref_sync_steps
        before = steps_after if self.steps_before_batch is None else self.steps_before_batch
        return bool(every) and steps_after // every > before // every

    def after_batch(self, policy: torch.nn.Module, steps_after: int, device: torch.device) -> dict[str, Tensor]:
        """Sync when due (:meth:`sync`); the metrics every step logs while ``ref_sync_steps`` is set (none otherwise):
        ``train/ref_sync/synced`` (1 when the step synced, else 0) and ``train/ref_sync/distance`` (:meth:`distance`,
        after any sync: it falls by the factor ``1 - ref_sync_alpha`` at a sync)."""
        if not self.loss.ref_sync_steps:
            return {}
        synced = self.sync_due(steps_after)
        if synced:
            self.sync(policy)
        metrics = {
            "train/ref_sync/synced": torch.tensor(float(synced)),
            "train/ref_sync/distance": self.distance(policy),
        }
        return {name: value.float().to(device) for name, value in metrics.items()}

    @torch.no_grad()
    def sync(self, policy: torch.nn.Module) -> None:
        """``reference = alpha * policy + (1 - alpha) * reference`` for every weight, alpha = ``loss.ref_sync_alpha``.

        Every process does the same in place on its own copy (the policies are equal after each optimizer step), in
        the reference's dtype. From then on checkpoints hold the reference's weights.
        """
        alpha = self.loss.ref_sync_alpha
        for weight, source in self._paired_weights(policy):
            weight.lerp_(source.to(device=weight.device, dtype=weight.dtype), alpha)
        self.moved = True

    @torch.no_grad()
    def distance(self, policy: torch.nn.Module) -> Tensor:
        """The L2 distance between the policy's and the reference's weights, over every weight (a float64 scalar, from
        per-weight norms of the float32 differences: no float64 copy of a whole weight)."""
        device = next(policy.parameters()).device
        squared = torch.zeros((), dtype=torch.float64, device=device)
        for weight, source in self._paired_weights(policy):
            difference = source.float() - weight.to(device=source.device, dtype=torch.float32)
            squared += torch.linalg.vector_norm(difference).double().square().to(squared.device)
        return squared.sqrt()

    def _paired_weights(self, policy: torch.nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
        """(reference weight, the policy's weight of the same name), for every weight of the reference."""
        weights = dict(policy.named_parameters())
        for name, weight in self.model.named_parameters():
            if name not in weights:
                raise RuntimeError(f"the reference model's parameter {name!r} has no counterpart in the policy")
            yield weight, weights[name].detach()

    # ------------------------------------------------------------------------------------- checkpoints
    @property
    def saves_state(self) -> bool:
        """Whether checkpoints hold the reference's weights: while ``loss.ref_sync_steps`` is set, and once they have
        moved away from the base weights."""
        return self.model is not None and bool(self.loss.ref_sync_steps or self.moved)

    def save_state(self, checkpoint: dict[str, Any], sync_pending: bool) -> None:
        """Put the reference's weights in ``checkpoint`` while ``loss.ref_sync_steps`` is set, and once they have moved
        away from the base weights (a sync, or a restore from a checkpoint that held them) whatever it is now.

        A periodic checkpoint is saved in a callback's ``on_train_batch_end``, which Lightning calls before the
        module's, where the step's sync happens: the caller says whether this is such a checkpoint of a step whose sync
        is due (``sync_pending``, :meth:`sync_due` while the batch is processed but not completed), and the resumed run
        makes that sync from the restored policy (this very step's weights, which the checkpoint holds).
        """
        if not self.saves_state:
            return
        checkpoint[REFERENCE_STATE_KEY] = self.model.state_dict()
        checkpoint[REFERENCE_SYNC_PENDING_KEY] = sync_pending

    def keep_state(self, checkpoint: dict[str, Any], fitting: bool) -> None:
        """Keep the checkpoint's reference weights until :meth:`restore` can put them back (a fit only); without them
        while ``loss.ref_sync_steps`` is set, say that the reference starts from the base weights."""
        state = checkpoint.get(REFERENCE_STATE_KEY)
        self.saved = None
        if not fitting:
            return  # validate, test and predict use no reference
        if state is not None:
            self.saved = (state, bool(checkpoint.get(REFERENCE_SYNC_PENDING_KEY, False)))
            return
        if not self.loss.ref_sync_steps:
            return
        saved_loss = (checkpoint.get("hyper_parameters") or {}).get("loss")
        saved_every = saved_loss.get("ref_sync_steps") if isinstance(saved_loss, dict) else None
        if saved_every:
            rank_zero_warn(
                f"The checkpoint holds no reference model although its run synced it every {saved_every} steps "
                f"(loss.ref_sync_steps): the reference starts again from the base weights of {self.base}, so the "
                "resumed run differs from an unbroken one."
            )
        else:
            rank_zero_info(
                "The checkpoint holds no reference model (its run did not sync it, loss.ref_sync_steps 0): the "
                f"reference starts from the base weights of {self.base} and syncs from here on."
            )

    def restore(self, policy: torch.nn.Module) -> None:
        """Put back the reference weights that :meth:`keep_state` kept, at the start of training: the reference is
        built and on its device by then, and the policy's weights are loaded, whether the strategy restores the
        checkpoint before ``on_fit_start`` or after it (DeepSpeed). A checkpoint saved before its step's sync gets the
        sync now, from the restored policy, as the unbroken run made it."""
        saved, self.saved = self.saved, None
        if saved is None or self.model is None:
            return
        state, sync_pending = saved
        self.model.load_state_dict(state)  # copied into the reference's own dtype and device
        self.moved = True
        if sync_pending and self.loss.ref_sync_steps:
            self.sync(policy)


__all__ = ["REFERENCE_STATE_KEY", "REFERENCE_SYNC_PENDING_KEY", "ReferencePolicy"]
