"""The language-model head run a chunk of positions at a time: per-token log-probs and entropies of completion tokens
from the last hidden states, with gradients, without ever holding the (N, T, V) logits.

Numerics only (a ``torch.nn.Linear`` head and tensors in, tensors out): which module of a model is its head, and
which hidden states to score, is the adapter's business (``VLMAdapter.completion_logps``, ``base.output_head``).
``VLMAdapter.completion_logps`` reads ``LOGITS_CHUNK_SIZE`` from this module at each call, and the backward pass
``VOCAB_CHUNK_SIZE``, so that patching them here (the tests do, to make several chunks of tiny models) takes effect.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

#: Completion positions whose logits exist at one time in a log-prob pass: (LOGITS_CHUNK_SIZE, V) floats, a few
#: times over with the log-softmax, instead of (N, C, V).
LOGITS_CHUNK_SIZE = 128
#: Vocabulary entries per slice when the backward pass makes the logits again: (N * C, VOCAB_CHUNK_SIZE) floats.
VOCAB_CHUNK_SIZE = 8192


def head_logps(
    head: torch.nn.Linear,
    hidden: Tensor,
    tokens: Tensor,
    suppressed: Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool | Literal["grad"] = False,
    chunk_size: int = LOGITS_CHUNK_SIZE,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``tokens`` under ``log_softmax(head(hidden) / temperature)`` with the ``suppressed`` tokens at
    -inf, and the entropy of that distribution, without ever holding the (N, T, V) logits.

    The forward pass makes the logits ``chunk_size`` positions at a time and keeps, per position, only what the
    backward pass needs (``_ChunkedHeadLogps``). The logits are those of the model's own forward (the head in the
    model's dtype, then divided by the temperature); each chunk's log-probs and entropies are those of a float32
    (float64 for float64 hidden states) log-softmax of them, to rounding what ``selective_log_softmax`` and
    ``entropy_from_logits`` give on whole logits (``tests/test_chunked_logps.py``).

    Args:
        head: the language-model head (``output_head``).
        hidden: (N, T, H) last hidden states of the positions that predict ``tokens``.
        tokens: (N, T) token ids to score.
        suppressed: (S,) token ids that cannot be sampled (their probability is 0).
        temperature: the sampling temperature that divides the logits.
        with_entropy: also return each position's entropy: ``True`` without gradient (statistics, masks), ``"grad"``
            with it (an entropy term in the loss; ``_ChunkedHeadLogps`` keeps what its backward pass needs, still
            without the logits).
        chunk_size: positions per chunk.

    Returns:
        logps: (N, T), float32 for half-precision hidden states, else their dtype.
        entropy: (N, T) in the same dtype, or None.
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    weight, bias = head.weight, head.bias
    trains = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (flat_hidden, weight, bias))
    if trains:
        logps, entropy = _ChunkedHeadLogps.apply(
            flat_hidden, weight, bias, tokens.reshape(-1), suppressed, temperature, with_entropy, chunk_size
        )
    else:
        logps, entropy, _, _ = _head_chunks(
            flat_hidden, weight, bias, tokens.reshape(-1), suppressed, temperature, with_entropy, chunk_size
        )
    return logps.view(tokens.shape), None if entropy is None else entropy.view(tokens.shape)


def _head_chunks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tokens: Tensor,
    suppressed: Tensor,
    temperature: float,
    with_entropy: bool | Literal["grad"],
    chunk_size: int,
    keep: str | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The forward pass of ``head_logps`` over (M, H) hidden states: (M,) log-probs, entropies (or None), and what
    ``keep`` asks for the backward pass: ``"lse"`` each position's log-normaliser (M,) in the scoring dtype (float32
    for half precision), or ``"direction"`` ``(W[token] - sum_v p_v W_v)`` (M, H), the gradient of the log-prob with
    respect to the hidden state times the temperature; with ``keep="direction"`` and ``with_entropy="grad"`` also
    ``sum_v p_v (log p_v + H) W_v`` (M, H), minus the gradient of the entropy H with respect to the hidden state times
    the temperature (``dH / dz_v = -p_v (log p_v + H)``); else None.

    Each chunk's (chunk_size, V) logits go through one fused log-softmax, written into a buffer kept across chunks;
    the log-probs, the log-normaliser (``max(z) - max(log_softmax(z))``) and the entropy are read from it, and the
    probabilities written over the logits: the passes over the vocabulary are memory-bound, and on the CPU each new
    (chunk_size, V) tensor costs its page faults on top of the arithmetic."""
    out_dtype = torch.promote_types(hidden.dtype, torch.float32)  # half precision is scored in float32
    logps, entropies, kept, entropy_kept = [], [], [], []
    entropy_direction = keep == "direction" and with_entropy == "grad"
    buffer = hidden.new_empty(min(chunk_size, tokens.shape[0]), weight.shape[0], dtype=out_dtype)
    for start in range(0, tokens.shape[0], chunk_size):
        chunk_tokens = tokens[start : start + chunk_size, None]
        logits = torch.nn.functional.linear(hidden[start : start + chunk_size], weight, bias)
        if temperature != 1.0:
            logits.div_(temperature)  # in the model's dtype, as the model's own logits divided by the temperature
        logits = logits.index_fill_(-1, suppressed, -torch.inf).to(out_dtype)
        chunk_logps = torch.log_softmax(logits, dim=-1, out=buffer[: logits.shape[0]])
        logps.append(chunk_logps.gather(-1, chunk_tokens)[:, 0])
        if keep == "lse":
            kept.append(logits.amax(dim=-1) - chunk_logps.amax(dim=-1))
        if with_entropy or keep == "direction":
            probs = torch.exp(chunk_logps, out=logits)  # the logits are not needed again
            if keep == "direction":
                kept.append(weight[chunk_tokens[:, 0]] - probs.to(weight.dtype) @ weight)
            if entropy_direction:
                log_probs = chunk_logps.clamp_min_(torch.finfo(out_dtype).min)
                entropy = -(log_probs * probs).sum(dim=-1)
                entropies.append(entropy)
                entropy_kept.append(log_probs.add_(entropy[:, None]).mul_(probs).to(weight.dtype) @ weight)
            elif with_entropy:
                # p * log p -> 0 as p -> 0; clamping -inf keeps 0 * -inf from becoming NaN.
                entropies.append(-chunk_logps.clamp_min_(torch.finfo(out_dtype).min).mul_(probs).sum(dim=-1))
    empty = hidden.new_zeros(0, dtype=out_dtype)
    return (
        torch.cat(logps) if logps else empty,
        (torch.cat(entropies) if entropies else empty) if with_entropy else None,
        (torch.cat(kept) if kept else empty) if keep is not None else None,
        (torch.cat(entropy_kept) if entropy_kept else hidden.new_zeros(0, hidden.shape[-1]))
        if entropy_direction
        else None,
    )


class _ChunkedHeadLogps(torch.autograd.Function):
    """``head_logps`` with gradients, for (M, H) hidden states, without the (M, V) logits in either pass.

    With ``z = (h W^T + b) / T`` and ``p = softmax(z)``, ``d logp(y) / dz_v = 1[v = y] - p_v``. When only the hidden
    states train (LoRA: the head is frozen), the forward pass keeps ``W_y - sum_v p_v W_v`` per position, which is
    ``T * d logp / dh``: the backward pass is one scaling, with no logits made again. When the head trains (tied to
    the input embeddings under full fine-tuning), the forward pass keeps each position's log-normaliser and the
    backward pass makes the logits again, ``VOCAB_CHUNK_SIZE`` vocabulary entries at a time, and writes each slice of
    the head's gradient once. It makes them under the forward pass's autocast state, so that they are the logits the
    log-normaliser came from: with float32 weights under bf16 autocast the forward's head ran in bf16, while the
    backward pass runs without autocast on CUDA (another thread), where float32 logits against a bf16 log-normaliser
    would give probabilities that do not sum to 1.

    With ``with_entropy="grad"`` the entropy ``H = -sum_v p_v log p_v`` has a gradient too: ``dH / dz_v = -p_v (log p_v
    + H)``. With the head frozen the forward pass also keeps ``sum_v p_v (log p_v + H) W_v`` per position; with the
    head training the backward pass reads ``log p_v = z_v - lse`` off the logits it makes again, and the saved H.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, suppressed, temperature, with_entropy, chunk_size):
        head_trains = weight.requires_grad or (bias is not None and bias.requires_grad)
        keep = "lse" if head_trains else "direction"
        logps, entropy, kept, entropy_kept = _head_chunks(
            hidden, weight, bias, tokens, suppressed, temperature, with_entropy, chunk_size, keep=keep
        )
        ctx.keep, ctx.temperature, ctx.entropy_grad = keep, temperature, with_entropy == "grad"
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        ctx.autocast = (device_type, torch.get_autocast_dtype(device_type) if autocast else None)
        if ctx.entropy_grad:
            ctx.save_for_backward(hidden, weight, bias, tokens, suppressed, kept, entropy, entropy_kept)
        else:
            ctx.save_for_backward(hidden, weight, bias, tokens, suppressed, kept)
            if entropy is not None:
                ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, weight, bias, tokens, suppressed, kept = ctx.saved_tensors[:6]
        scale = grad_logps / ctx.temperature  # (M,) d loss / d logp, through the division by the temperature
        # (M,) d loss / d H through the temperature (None: the entropy has no gradient)
        entropy_scale = grad_entropy / ctx.temperature if ctx.entropy_grad and grad_entropy is not None else None
        if ctx.keep == "direction":
            grad_hidden = None
            if ctx.needs_input_grad[0]:
                grad_hidden = scale[:, None] * kept
                if entropy_scale is not None:
                    grad_hidden = grad_hidden - entropy_scale[:, None] * ctx.saved_tensors[7]
                grad_hidden = grad_hidden.to(hidden.dtype)
            return grad_hidden, None, None, None, None, None, None, None
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        device_type, autocast_dtype = ctx.autocast
        forward_autocast = functools.partial(
            torch.autocast, device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        )
        for start in range(0, weight.shape[0], VOCAB_CHUNK_SIZE):
            stop = min(start + VOCAB_CHUNK_SIZE, weight.shape[0])
            weight_slice = weight[start:stop]
            bias_slice = None if bias is None else bias[start:stop]
            with forward_autocast():
                logits = torch.nn.functional.linear(hidden, weight_slice, bias_slice)
            if ctx.temperature != 1.0:
                logits.div_(ctx.temperature)
            in_slice = suppressed[(suppressed >= start) & (suppressed < stop)] - start
            logits = logits.index_fill_(-1, in_slice, -torch.inf).to(kept.dtype)
            if entropy_scale is None:
                # d loss / d logits = scale * (1[v = y] - p_v), written over the logits
                grad_logits = logits.sub_(kept[:, None]).exp_().mul_(-scale[:, None])
            else:
                grad_logits = _grad_logits_with_entropy(logits, kept, ctx.saved_tensors[6], scale, entropy_scale)
            chosen = (tokens >= start) & (tokens < stop)
            grad_logits[rows[chosen], tokens[chosen] - start] += scale[chosen]
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden.addmm_(grad_logits, weight_slice)
            if grad_weight is not None:
                torch.mm(grad_logits.T, hidden, out=grad_weight[start:stop])
            if grad_bias is not None:
                grad_bias[start:stop] = grad_logits.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _grad_logits_with_entropy(
    logits: Tensor, lse: Tensor, entropy: Tensor, scale: Tensor, entropy_scale: Tensor
) -> Tensor:
    """d loss / d logits of a (M, V') slice, but the chosen token's ``+scale``: ``-p_v (scale + entropy_scale
    (log p_v + H))``, from the log-prob's ``scale (1[v = y] - p_v)`` and the entropy's ``-entropy_scale p_v (log p_v +
    H)``; written over ``logits``."""
    log_probs = logits.sub_(lse[:, None])
    probs = log_probs.exp()
    # clamping -inf (a suppressed token, p = 0) keeps 0 * -inf from becoming NaN; p multiplies before any scale could
    # take the clamped value to -inf
    entropy_part = log_probs.clamp_min_(torch.finfo(log_probs.dtype).min).add_(entropy[:, None]).mul_(probs)
    return entropy_part.mul_(entropy_scale[:, None]).add_(probs.mul_(scale[:, None])).neg_()
