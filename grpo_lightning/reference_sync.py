"""Reference sync (TR-DPO): every ``loss.ref_sync_steps`` optimizer steps the frozen KL reference moves toward the
policy, ``reference = alpha * policy + (1 - alpha) * reference`` (Gorbatovski et al. 2024, arXiv 2404.09656; TRL's
``sync_ref_model``), and checkpoints carry the moved reference so that a resumed run continues exactly.

:class:`ReferenceSyncMixin` holds the hooks and is mixed into :class:`~grpo_lightning.module.GRPOModule`, which owns
the reference model (``reference_model``) and calls :meth:`save_reference_state`, :meth:`keep_reference_state` and
:meth:`restore_reference` from its checkpoint and training-start hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from grpo_lightning.errors import ConfigError

#: Checkpoint keys: the reference model's weights (saved once they have moved away from the base weights), and whether
#: the checkpoint was saved after the optimizer step that reached a sync but before the sync (see
#: :meth:`ReferenceSyncMixin.save_reference_state`).
REFERENCE_STATE_KEY = "reference_state_dict"
REFERENCE_SYNC_PENDING_KEY = "reference_sync_pending"


class ReferenceSyncMixin:
    """The reference's sync and its part of checkpoints (see the module docstring)."""

    def check_reference_sync(self) -> None:
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
        if self._trainer is not None and getattr(self.trainer.strategy, "zero_stage_3", False):
            raise ConfigError(
                "loss.ref_sync_steps cannot mix the policy into the reference under DeepSpeed ZeRO-3, which shards the "
                "policy's weights across processes; use ZeRO-2 (the recipe's), or set loss.ref_sync_steps to 0."
            )
        if self.loss.beta <= 0:
            raise ConfigError("loss.ref_sync_steps needs the reference model, which loss.beta > 0 loads.")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._steps_before_batch = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Every ``loss.ref_sync_steps`` optimizer steps, mix the policy into the reference (:meth:`sync_reference`).

        A batch takes ``num_iterations`` optimizer steps, so the sync happens after the batch in which the step count
        reaches a multiple of ``ref_sync_steps``. Logged every step: ``train/ref_sync/synced`` (1 when the step
        synced, else 0) and ``train/ref_sync/distance`` (:meth:`reference_distance`, after any sync: it falls by the
        factor ``1 - ref_sync_alpha`` at a sync).
        """
        every = self.loss.ref_sync_steps
        if not every:
            return
        before = self.__dict__.get("_steps_before_batch", self.global_step)
        synced = self.global_step // every > before // every
        if synced:
            self.sync_reference()
        # both every step: Lightning would log a metric given only now and then again at every later step
        metrics = {
            "train/ref_sync/synced": torch.tensor(float(synced)),
            "train/ref_sync/distance": self.reference_distance(),
        }
        metrics = {name: value.float().to(self.device) for name, value in metrics.items()}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    @torch.no_grad()
    def sync_reference(self) -> None:
        """``reference = alpha * policy + (1 - alpha) * reference`` for every weight, alpha = ``loss.ref_sync_alpha``.

        Every process does the same in place on its own copy (the policies are equal after each optimizer step), in
        the reference's dtype. From then on checkpoints hold the reference's weights.
        """
        alpha = self.loss.ref_sync_alpha
        for weight, source in self._reference_and_policy_weights():
            weight.lerp_(source.to(device=weight.device, dtype=weight.dtype), alpha)
        self._reference_moved = True

    @torch.no_grad()
    def reference_distance(self) -> Tensor:
        """The L2 distance between the policy's and the reference's weights, over every weight (a float64 scalar, from
        per-weight norms of the float32 differences: no float64 copy of a whole weight)."""
        squared = torch.zeros((), dtype=torch.float64, device=self.device)
        for weight, source in self._reference_and_policy_weights():
            difference = source.float() - weight.to(device=source.device, dtype=torch.float32)
            squared += torch.linalg.vector_norm(difference).double().square().to(squared.device)
        return squared.sqrt()

    def _reference_and_policy_weights(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(reference weight, the policy's weight of the same name), for every weight of the reference."""
        policy = dict(self.model.named_parameters())
        for name, weight in self.reference_model.named_parameters():
            if name not in policy:
                raise RuntimeError(f"the reference model's parameter {name!r} has no counterpart in the policy")
            yield weight, policy[name].detach()

    # ------------------------------------------------------------------------------------- checkpoints
    def save_reference_state(self, checkpoint: dict[str, Any]) -> None:
        """Put the reference's weights in ``checkpoint`` while ``loss.ref_sync_steps`` is set, and once they have moved
        away from the base weights (a sync, or a restore from a checkpoint that held them) whatever it is now.

        A periodic checkpoint is saved in a callback's ``on_train_batch_end``, which Lightning calls before the
        module's, where the step's sync happens: such a checkpoint is marked pending, and the resumed run makes that
        sync from the restored policy (this very step's weights, which the checkpoint holds).
        """
        if self.reference_model is None or not (self.loss.ref_sync_steps or self.__dict__.get("_reference_moved")):
            return
        checkpoint[REFERENCE_STATE_KEY] = self.reference_model.state_dict()
        checkpoint[REFERENCE_SYNC_PENDING_KEY] = self._reference_sync_pending()

    def _reference_sync_pending(self) -> bool:
        every = self.loss.ref_sync_steps
        if self._trainer is None or not every:
            return False
        before = self.__dict__.get("_steps_before_batch", self.global_step)
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return self.global_step // every > before // every and progress.processed > progress.completed

    def keep_reference_state(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint's reference weights until :meth:`restore_reference` can put them back; without them
        while ``loss.ref_sync_steps`` is set, say that the reference starts from the base weights."""
        state = checkpoint.get(REFERENCE_STATE_KEY)
        self._saved_reference = None
        if self._trainer is not None and self.trainer.state.fn != "fit":
            return  # validate, test and predict use no reference
        if state is not None:
            self._saved_reference = (state, bool(checkpoint.get(REFERENCE_SYNC_PENDING_KEY, False)))
            return
        if not self.loss.ref_sync_steps:
            return
        saved_loss = (checkpoint.get("hyper_parameters") or {}).get("loss")
        saved_every = saved_loss.get("ref_sync_steps") if isinstance(saved_loss, dict) else None
        if saved_every:
            rank_zero_warn(
                f"The checkpoint holds no reference model although its run synced it every {saved_every} steps "
                f"(loss.ref_sync_steps): the reference starts again from the base weights of "
                f"{self.model_name_or_path}, so the resumed run differs from an unbroken one."
            )
        else:
            rank_zero_info(
                "The checkpoint holds no reference model (its run did not sync it, loss.ref_sync_steps 0): the "
                f"reference starts from the base weights of {self.model_name_or_path} and syncs from here on."
            )

    def restore_reference(self) -> None:
        """Put back the reference weights that :meth:`keep_reference_state` kept, at the start of training: the
        reference is built and on its device by then, and the policy's weights are loaded, whether the strategy restores
        the checkpoint before ``on_fit_start`` or after it (DeepSpeed). A checkpoint saved before its step's sync gets
        the sync now, from the restored policy, as the unbroken run made it."""
        saved = self.__dict__.get("_saved_reference")
        self._saved_reference = None
        if saved is None or self.reference_model is None:
            return
        state, sync_pending = saved
        self.reference_model.load_state_dict(state)  # copied into the reference's own dtype and device
        self._reference_moved = True
        if sync_pending and self.loss.ref_sync_steps:
            self.sync_reference()


__all__ = ["REFERENCE_STATE_KEY", "REFERENCE_SYNC_PENDING_KEY", "ReferenceSyncMixin"]
