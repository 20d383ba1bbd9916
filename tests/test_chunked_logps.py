"""Completion log-probs from the last hidden states, the language-model head run a chunk of positions at a time
(``head_logps``): the same log-probs, entropies, loss and gradients as whole (N, C, V) logits, which only these
tests still make."""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.adapters import chunked_head
from grpo_lightning.adapters.base import output_head
from grpo_lightning.adapters.chunked_head import head_logps
from grpo_lightning.adapters.prefix_cache import cache_through_checkpointing
from grpo_lightning.algorithms import entropy_from_logits, selective_log_softmax
from tests.helpers import FAMILIES, B, G, first_batch, make_module, reference_adapter
from tests.tolerances import F32_RTOL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPERATURE = 0.7


def reference_logps(logits: torch.Tensor, tokens: torch.Tensor, suppressed: torch.Tensor, temperature: float):
    """Log-probs and entropies from whole logits (N, T, V), in their dtype: the plain formula."""
    logits = (logits / temperature).index_fill(-1, suppressed, -torch.inf)
    logps = logits.log_softmax(-1)
    probs = logps.exp()
    entropy = -(probs * logps.clamp_min(torch.finfo(logps.dtype).min)).sum(-1)
    return logps.gather(-1, tokens[..., None])[..., 0], entropy


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("head_trains", [True, False])
def test_head_logps_match_a_float64_reference_with_gradients(chunk_size, head_trains, monkeypatch):
    monkeypatch.setattr(chunked_head, "VOCAB_CHUNK_SIZE", 16)  # backward-pass vocabulary slices, a short last one
    torch.manual_seed(0)
    n, t, h, v = 3, 7, 16, 50
    head = torch.nn.Linear(h, v, bias=head_trains).double().requires_grad_(head_trains)
    hidden = torch.randn(n, t, h, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, v - 2, (n, t))
    suppressed = torch.tensor([v - 2, v - 1])
    advantages = torch.randn(n, t, dtype=torch.float64)

    logps, entropy = head_logps(head, hidden, tokens, suppressed, TEMPERATURE, with_entropy=True, chunk_size=chunk_size)
    (logps * advantages).sum().backward()
    grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    expected, expected_entropy = reference_logps(head(hidden), tokens, suppressed, TEMPERATURE)
    (expected * advantages).sum().backward()
    assert logps.dtype == entropy.dtype == torch.float64
    torch.testing.assert_close(logps, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, expected_entropy, rtol=0, atol=1e-12)
    expected_grads = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    assert len(grads) == len(expected_grads) == (3 if head_trains else 1)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert entropy is not None and not entropy.requires_grad


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("head_trains", [True, False])
def test_the_entropy_with_gradient_matches_a_float64_reference(chunk_size, head_trains, monkeypatch):
    """``with_entropy="grad"`` (``loss.entropy_coef``): the entropy's gradient, beside the log-probs', through each
    position's chunk (head frozen: the kept directions; head trained: the logits made again a vocabulary slice at a
    time), equals autograd's through whole logits, suppressed tokens and the temperature included."""
    monkeypatch.setattr(chunked_head, "VOCAB_CHUNK_SIZE", 16)
    torch.manual_seed(1)
    n, t, h, v = 3, 7, 16, 50
    head = torch.nn.Linear(h, v, bias=head_trains).double().requires_grad_(head_trains)
    hidden = torch.randn(n, t, h, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, v - 2, (n, t))
    suppressed = torch.tensor([v - 2, v - 1])
    advantages, bonus = torch.randn(n, t, dtype=torch.float64), torch.randn(n, t, dtype=torch.float64)

    logps, entropy = head_logps(
        head, hidden, tokens, suppressed, TEMPERATURE, with_entropy="grad", chunk_size=chunk_size
    )
    assert entropy.requires_grad
    (logps * advantages + entropy * bonus).sum().backward()
    grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    # the suppressed tokens (the last two) left out of the softmax, where their probability is 0: the reference's own
    # gradient has no 0 * -inf in it
    logps_ref = (head(hidden)[..., : v - 2] / TEMPERATURE).log_softmax(-1)
    expected = logps_ref.gather(-1, tokens[..., None])[..., 0]
    expected_entropy = -(logps_ref.exp() * logps_ref).sum(-1)
    (expected * advantages + expected_entropy * bonus).sum().backward()
    torch.testing.assert_close(logps, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, expected_entropy, rtol=0, atol=1e-12)
    expected_grads = [hidden.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    assert len(grads) == len(expected_grads) == (3 if head_trains else 1)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("head_trains", [True, False])
def test_asking_for_the_entropys_gradient_leaves_the_values_and_the_log_prob_gradient_as_they_were(head_trains):
    """The same forward values to the bit, and with no gradient flowing into the entropy the same gradients."""
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 40).requires_grad_(head_trains)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    tokens, suppressed, advantages = torch.randint(0, 39, (2, 9)), torch.tensor([39]), torch.randn(2, 9)
    results = []
    for with_entropy in (True, "grad"):
        logps, entropy = head_logps(head, hidden, tokens, suppressed, TEMPERATURE, with_entropy=with_entropy)
        (logps * advantages).sum().backward()
        grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
        hidden.grad = None
        head.zero_grad(set_to_none=True)
        results.append((logps.detach(), entropy.detach(), grads))
    (logps_a, entropy_a, grads_a), (logps_b, entropy_b, grads_b) = results
    assert torch.equal(logps_a, logps_b) and torch.equal(entropy_a, entropy_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=F32_RTOL, atol=1e-7)


@pytest.mark.parametrize("backward_under_autocast", [False, True])
def test_a_trained_head_under_bf16_autocast_backpropagates_through_the_forwards_bf16_logits(
    backward_under_autocast, monkeypatch
):
    """Float32 weights under bf16 autocast (bf16-mixed): the forward pass's head runs in bf16. The backward pass,
    which on CUDA runs without autocast (another thread), makes the same bf16 logits again, so the gradients are those
    of the log-softmax of the forward's logits (float64 reference), not of float32 logits against the log-normaliser
    of bf16 ones. The logits are a few tens, where bf16 rounds them by more than 0.01."""
    monkeypatch.setattr(chunked_head, "VOCAB_CHUNK_SIZE", 1000)  # three vocabulary slices
    torch.manual_seed(0)
    n, h, v = 40, 32, 3000
    head = torch.nn.Linear(h, v, bias=False)
    torch.nn.init.normal_(head.weight, std=3.0)
    hidden = torch.randn(n, h, requires_grad=True)
    tokens, suppressed, advantages = torch.randint(1, v, (n,)), torch.tensor([0]), torch.randn(n, dtype=torch.float64)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = head_logps(head, hidden[None], tokens[None], suppressed, TEMPERATURE)
        loss = (logps[0].double() * advantages).sum()
        if backward_under_autocast:
            loss.backward()
    if not backward_under_autocast:  # as on CUDA
        loss.backward()

    bf16_logits = torch.nn.functional.linear(hidden.detach().bfloat16(), head.weight.detach().bfloat16())
    z = (bf16_logits / TEMPERATURE).double().index_fill(-1, suppressed, -torch.inf)
    expected_logps = z.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    # d loss / d z = A (1[v = y] - p), and z = h W^T / T
    grad_z = -advantages[:, None] * z.softmax(-1)
    grad_z[torch.arange(n), tokens] += advantages
    grad_z /= TEMPERATURE
    torch.testing.assert_close(logps[0].double(), expected_logps, rtol=F32_RTOL, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), grad_z @ head.weight.detach().double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.weight.grad.double(), grad_z.T @ hidden.detach().double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_trains", [True, False])
def test_head_logps_keep_no_logits_for_the_backward_pass(head_trains):
    """With gradients, what the graph keeps is the hidden states, the head's own weight and per-position values,
    never logits."""
    torch.manual_seed(0)
    n, t, h, v = 2, 64, 8, 4096
    head = torch.nn.Linear(h, v, bias=False).requires_grad_(head_trains)
    hidden = torch.randn(n, t, h, requires_grad=True)
    tokens = torch.randint(0, v, (n, t))
    saved: list[tuple[torch.Size, bool]] = []

    def pack(tensor):
        saved.append((tensor.shape, tensor.data_ptr() == head.weight.data_ptr()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logps, _ = head_logps(head, hidden, tokens, torch.tensor([0]), chunk_size=16)
    assert saved and all(is_weight or shape.numel() <= n * t * h for shape, is_weight in saved), saved
    logps.sum().backward()
    assert hidden.grad is not None and (head.weight.grad is not None) == head_trains


def old_path_logps(adapter, model, rollout, completion_ids, completion_mask, temperature: float):
    """Log-probs and entropies from the whole model's logits of the completion positions (``logits_to_keep``), on
    the adapter's path (shared prompts or whole sequences): the computation before the head ran in chunks."""
    prompts, prompt_index = rollout.prompts, rollout.prompt_index.tolist()
    width = int(completion_mask.sum(-1).max())
    inputs = prompts.token_inputs(prompt_index, completion_mask[:, :width])
    prompt_width = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids[:, :width]], dim=1)
    if adapter.shared_encoding:
        cache = adapter.prefill(model, prompts, prompt_index, growing=False)
        with cache_through_checkpointing(model):
            outputs = model(
                input_ids=inputs["input_ids"][:, prompt_width - 1 :],
                attention_mask=inputs["attention_mask"],
                **adapter.continuation_positions(model, inputs["attention_mask"], prompt_width - 1),
                cache=cache,
                logits_to_keep=width + 1,
                use_cache=False,
            )
    else:
        outputs = model(
            **inputs,
            **adapter.position_kwargs(inputs["attention_mask"]),
            **prompts.visual_for(prompt_index, adapter.vision_dtype(model)),
            logits_to_keep=width + 1,
            use_cache=False,
        )
    logits = outputs.logits[:, :-1, :] / temperature
    suppressed = torch.tensor(adapter.suppressed_token_ids(model))
    logits = logits.index_fill(-1, suppressed, -torch.inf)
    logps = torch.zeros(completion_ids.shape)
    token_logps = selective_log_softmax(logits, completion_ids[:, :width]).float()
    logps[:, :width] = token_logps.masked_fill(~completion_mask[:, :width].bool(), 0.0)
    entropy = torch.zeros_like(logps)
    entropy[:, :width] = entropy_from_logits(logits.detach())
    return logps, entropy


def pass_with_gradients(module, compute, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(log-probs, entropies, loss, every trainable parameter's gradient) of one policy pass: ``compute()`` gives the
    log-probs and entropies, a per-sequence-mean loss weights them by fixed advantages."""
    module.model.zero_grad(set_to_none=True)
    logps, entropy = compute()
    advantages = torch.linspace(-1.0, 1.0, mask.shape[0])
    loss = -((logps * mask).sum(-1) / mask.sum(-1).clamp(min=1) * advantages).mean()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
    return logps.detach(), entropy, loss.detach(), grads


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("setting", ["full", "gradient_checkpointing", "lora"])
def test_completion_logps_equal_whole_logits(assets, data_kwargs, family, setting, monkeypatch):
    """Log-probs, entropies, loss and gradients of the chunked head, on the shared and the unshared path, equal those
    of the model's whole logits: every family, with gradient checkpointing, with LoRA (adapters on the language
    model, the head frozen) and without (the head, tied to the input embeddings, trains)."""
    options = {
        "full": {},
        "gradient_checkpointing": {"gradient_checkpointing": True},
        "lora": {"lora": dict(r=4, alpha=8, dropout=0.0)},
    }[setting]
    module = make_module(assets, family, sampling=dict(num_generations=G, max_completion_length=12), **options)
    module.configure_model()
    module.model.train()
    batch = first_batch(data_kwargs)
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    assert len(rollout.completions) == B * G
    # Completions that end early (random weights seldom sample EOS): padding after them, as a rollout has it, and
    # the longest shorter than the completion budget, so that the pass trims the width.
    lengths = 10 - torch.arange(B * G) % 4
    completion_mask = (torch.arange(rollout.completion_ids.shape[1]) < lengths[:, None]).long()
    pad = module.adapter.tokenizer.pad_token_id
    completion_ids = rollout.completion_ids.masked_fill(~completion_mask.bool(), pad)
    mask = completion_mask.float()
    # 8 sequences x 10 positions in chunks of 7: chunks that straddle sequences, a short last one
    monkeypatch.setattr(chunked_head, "LOGITS_CHUNK_SIZE", 7)
    monkeypatch.setattr(chunked_head, "VOCAB_CHUNK_SIZE", 300)  # every family's vocabulary in several slices
    assert output_head(module.model).weight.requires_grad == (setting != "lora")

    def chunked(adapter):
        return lambda: adapter.completion_logps(
            module.model,
            rollout.prompts,
            rollout.prompt_index.tolist(),
            completion_ids,
            completion_mask,
            temperature=TEMPERATURE,
            with_entropy=True,
        )

    def whole(adapter):
        return lambda: old_path_logps(adapter, module.model, rollout, completion_ids, completion_mask, TEMPERATURE)

    for adapter in (module.adapter, reference_adapter(module)):
        expected = pass_with_gradients(module, whole(adapter), mask)
        assert expected[3].numel() > 0
        got = pass_with_gradients(module, chunked(adapter), mask)
        for name, value, reference in zip(("logps", "entropy", "loss", "gradients"), got, expected, strict=True):
            torch.testing.assert_close(
                value, reference, rtol=F32_RTOL, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_logps_in_bfloat16_under_autocast_equal_whole_logits(assets, data_kwargs, family):
    """The recipe's precision (bf16 weights, bf16-mixed autocast): the chunked head runs and its backward works under
    autocast, and it agrees with the whole logits as closely as two bf16 computations of them can (rounding of the
    head's matmul, summed in another order)."""
    module = make_module(assets, family, sampling=dict(num_generations=G, max_completion_length=12))
    module.configure_model()
    module.model.to(torch.bfloat16).train()
    batch = first_batch(data_kwargs)
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    mask = rollout.completion_mask.float()
    prompt_index = rollout.prompt_index.tolist()

    def chunked():
        return module.adapter.completion_logps(
            module.model,
            rollout.prompts,
            prompt_index,
            rollout.completion_ids,
            rollout.completion_mask,
            temperature=TEMPERATURE,
            with_entropy=True,
        )

    def whole():
        return old_path_logps(
            module.adapter, module.model, rollout, rollout.completion_ids, rollout.completion_mask, TEMPERATURE
        )

    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = pass_with_gradients(module, whole, mask)
        got = pass_with_gradients(module, chunked, mask)
    assert got[0].dtype == torch.float32 and torch.isfinite(got[3]).all()
    torch.testing.assert_close(got[0], expected[0], rtol=F32_RTOL, atol=1e-3)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-3, atol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(got[3].float(), expected[3].float(), dim=0)
    assert cosine > 0.999, cosine
