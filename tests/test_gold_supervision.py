"""Supervision from the gold solution (``loss.sft_coef``): its coefficient and NLL against float64 definitions, the
gold rows scored in the policy pass against a plain pass of their own, the step's gradient against a reference
computed apart, the logged curves, and the config's refusals, ``--help`` and YAML."""

from __future__ import annotations

import copy

import pytest
import torch

from grpo_lightning.algorithms import gold_nll, sft_coef_at
from grpo_lightning.cli import main
from grpo_lightning.config import LossConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.errors import ConfigError
from grpo_lightning.rollout import ScoredRollout, decode_completions, encode_completions
from grpo_lightning.stages.supervision import GoldSupervision
from grpo_lightning.task import format_solution
from scripts.tb_scalars import read_scalars
from tests.helpers import B, G, demo_model_options, first_batch, fit, flat_params, make_module, reference_adapter
from tests.test_shared_encoding import count_images
from tests.tolerances import F32_RTOL

F64 = {"rtol": 1e-12, "atol": 1e-12}
GOLD = [
    format_solution("có", "vì con mèo đang nằm trên ghế sofa"),
    format_solution("màu đỏ", "chiếc xe buýt hai tầng ở Hà Nội được sơn đỏ"),
    format_solution("không", ""),
]


def constant_reward(completions, solution, **kwargs):
    """Every completion scores 1: every advantage is 0, so the policy term has no gradient and the step's gradient
    is the gold term's alone."""
    return [1.0] * len(completions)


# ----------------------------------------------------------------------------------------------- the pure parts
@pytest.mark.parametrize(
    ("coef", "decay_steps", "step", "expected"),
    [
        (0.1, None, 0, 0.1),
        (0.1, None, 10_000, 0.1),
        (0.1, 100, 0, 0.1),
        (0.1, 100, 25, 0.075),
        (0.1, 100, 99, 0.001),
        (0.1, 100, 100, 0.0),
        (0.1, 100, 150, 0.0),
        (2.0, 1, 0, 2.0),
        (2.0, 1, 1, 0.0),
    ],
)
def test_the_coefficient_decays_linearly_to_zero_over_its_steps(coef, decay_steps, step, expected):
    assert sft_coef_at(coef, decay_steps, step) == pytest.approx(expected, abs=1e-15)


def test_the_gold_nll_is_the_token_mean_of_minus_the_log_probs_and_micro_batches_add_up():
    gen = torch.Generator().manual_seed(3)
    logps = -4 * torch.rand(5, 7, generator=gen, dtype=torch.float64)
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    logps[mask == 0] = -torch.inf  # padding may hold anything
    kept = [(i, t) for i in range(5) for t in range(7) if mask[i, t]]
    expected = -sum(float(logps[i, t]) for i, t in kept) / len(kept)
    torch.testing.assert_close(gold_nll(logps, mask), torch.tensor(expected, dtype=torch.float64), **F64)
    total = float(mask.sum())
    shares = sum(gold_nll(logps[rows], mask[rows], total) for rows in (slice(0, 2), slice(2, 3), slice(3, 5)))
    torch.testing.assert_close(shares, torch.tensor(expected, dtype=torch.float64), **F64)
    with pytest.raises(ValueError, match="shape"):
        gold_nll(logps, mask[:, :3])


def test_gold_completions_encode_with_their_eos_and_decode_back_to_the_text(assets):
    module = make_module(assets)
    module.configure_model()
    tokenizer, eos = module.adapter.tokenizer, module.adapter.eos_token_ids(module.model)[0]
    ids, mask = encode_completions(tokenizer, GOLD, eos)
    lengths = mask.sum(-1)
    assert ids.shape == mask.shape and ids.shape[1] == int(lengths.max())
    assert [int(ids[row, lengths[row] - 1]) for row in range(len(GOLD))] == [eos] * len(GOLD)
    assert bool((ids[mask == 0] == tokenizer.pad_token_id).all())
    assert decode_completions(tokenizer, ids, mask) == GOLD


def test_each_prompts_gold_rides_in_the_micro_batch_of_its_first_completion():
    prompt_index = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    micro_batches = [slice(0, 4), slice(4, 8), slice(8, 9)]
    gold = GoldSupervision(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2), micro_batches, prompt_index)
    assert gold.prompts_of == [[0, 1], [2], []]
    assert gold.rows(2) is None and gold.rows(0).prompt_index == [0, 1]


def test_with_dynamic_sampling_the_solutions_follow_the_chosen_groups_prompts(assets, data_kwargs):
    """Groups chosen from two rounds: the trained groups' solutions are their samples', in the joined prompts' order."""
    module = make_module(assets, sampling=dict(num_generations=2, dynamic_sampling=True))
    module.configure_model()
    data = ViVQAXDataModule(**data_kwargs, batch_size=3, shuffle=False)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader), next(loader)]
    torch.manual_seed(0)
    rollouts = [module.rollouts.generate(batch, 2, do_sample=True) for batch in batches]
    flags = [torch.tensor([False, False, True]), torch.tensor([True, False, True])]
    sampled = [
        ScoredRollout(batch, rollout, torch.zeros(6), torch.zeros(6, 1), informative)
        for batch, rollout, informative in zip(batches, rollouts, flags, strict=True)
    ]
    trained = module.rollouts.trained_groups(sampled)
    assert trained.chosen == [(0, 2), (1, 0), (1, 2)]
    assert trained.solutions == [batches[r]["solution"][p] for r, p in trained.chosen]
    assert trained.rollout.prompts.texts == [
        module.adapter.render_prompt(batches[r]["prompt"][p]) for r, p in trained.chosen
    ]
    assert len(set(trained.solutions)) == 3


# ------------------------------------------------------------------------------------ the pass and the gradient
def test_the_gold_rows_in_the_policy_pass_equal_a_plain_pass_and_encode_no_image_again(assets, data_kwargs):
    """Sampled at temperature 0.7, the sampled rows keep their log-probs and the gold rows get those of a pass of
    their own at temperature 1 on the unshared reference path; the pass encodes each image once, as without them."""
    module = make_module(assets, sampling=dict(temperature=0.7), loss=dict(sft_coef=0.5, micro_batch_size=B * G))
    module.configure_model()
    module.model.eval()
    batch = first_batch(data_kwargs)
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    update, whole = module.update, slice(0, B * G)
    gold = update.gold_supervision(rollout, batch["solution"], [whole])
    rows = gold.rows(0)
    assert rows.prompt_index == list(range(B))
    images = count_images(module)
    with torch.no_grad():
        plain, _ = update.logps(module.model, rollout, whole, with_entropy=False)
        images_plain = sum(images)
        logps, _, gold_logps = update.logps_with_gold(module.model, rollout, whole, False, rows)
    assert sum(images) - images_plain == images_plain, "the gold rows encoded an image of their own"
    torch.testing.assert_close(logps, plain, rtol=F32_RTOL, atol=1e-6)
    adapter = reference_adapter(module)
    with torch.no_grad():
        expected, _ = adapter.completion_logps(
            module.model, rollout.prompts, rows.prompt_index, rows.ids, rows.mask, temperature=1.0
        )
    assert gold_logps.shape == rows.ids.shape and bool((gold_logps[rows.mask == 0] == 0).all())
    torch.testing.assert_close(gold_logps, expected, rtol=F32_RTOL, atol=1e-5)


@pytest.mark.parametrize("micro_batch_size", [1, 3, 8])
def test_the_steps_gradient_is_the_coefficient_times_the_gradient_of_the_batchs_gold_nll(
    assets, data_kwargs, tmp_path, monkeypatch, micro_batch_size
):
    """Constant rewards leave only the gold term; SGD with lr 1 and no clipping makes the weight change minus its
    gradient, which must be ``sft_coef`` times that of the batch's gold token-mean NLL computed apart, on the unshared
    path at temperature 1 (the rollout sampled at 0.7), whatever the micro-batch size."""
    module = make_module(
        assets,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        rewards=dict(funcs=["tests.test_gold_supervision:constant_reward"]),
        sampling=dict(temperature=0.7),
        loss=dict(beta=0.0, sft_coef=0.25, micro_batch_size=micro_batch_size, max_grad_norm=None),
    )
    module.configure_model()
    initial = copy.deepcopy(module.model)
    seen = {}
    original = GoldSupervision.of.__func__

    def recording(cls, config, tokenizer, eos, rollout, solutions, *args):
        seen.update(prompts=rollout.prompts, solutions=list(solutions))
        return original(cls, config, tokenizer, eos, rollout, solutions, *args)

    monkeypatch.setattr(GoldSupervision, "of", classmethod(recording))
    before = flat_params(module)
    fit(module, data_kwargs, tmp_path, steps=1, seed=5)
    delta = flat_params(module) - before

    initial.train()
    eos = module.adapter.eos_token_ids(initial)[0]
    ids, mask = encode_completions(module.adapter.tokenizer, seen["solutions"], eos)
    logps, _ = reference_adapter(module).completion_logps(initial, seen["prompts"], list(range(B)), ids, mask)
    (0.25 * gold_nll(logps, mask)).backward()
    expected = -torch.cat(
        [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in initial.parameters()]
    )
    assert expected.abs().max() > 0
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_a_fit_logs_the_gold_nll_and_the_decaying_coefficient(assets, data_kwargs, tmp_path):
    module = make_module(assets, loss=dict(sft_coef=0.3, sft_decay_steps=2), logging=dict(completions_every_n_steps=0))
    trainer = fit(module, data_kwargs, tmp_path, steps=3)
    scalars = read_scalars(trainer.logger.log_dir)
    assert [value for _, value in scalars["train/sft_coef"]] == pytest.approx([0.3, 0.15, 0.0])
    nll = [value for _, value in scalars["train/sft/nll"]]
    assert len(nll) == 3 and all(value > 0 for value in nll)  # still measured once the coefficient is 0


def test_without_the_option_no_gold_row_is_scored(assets, data_kwargs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(GoldSupervision, "rows", lambda self, index: calls.append(index))
    trainer = fit(make_module(assets), data_kwargs, tmp_path, steps=1)
    assert not calls and "train/sft/nll" not in read_scalars(trainer.logger.log_dir)


def test_the_old_log_probs_come_from_passes_with_the_gold_rows_as_the_first_iterations_do(assets, data_kwargs):
    """With mu > 1, the sampling policy's log-probs are those of no-grad passes holding the same gold rows as the
    update's, so the first iteration's ratio is that of passes of the same shape."""
    module = make_module(assets, loss=dict(sft_coef=0.5, num_iterations=2, micro_batch_size=3))
    module.configure_model()
    batch = first_batch(data_kwargs)
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    update = module.update
    old = update.old_logps(rollout, batch["solution"])
    mbs = update.micro_batches(B * G)
    gold = update.gold_supervision(rollout, batch["solution"], mbs)
    assert [gold.prompts_of[i] for i in range(len(mbs))] == [[0], [1], []]
    module.model.eval()
    with torch.no_grad():
        expected = torch.cat(
            [update.logps_with_gold(module.model, rollout, mb, False, gold.rows(i))[0] for i, mb in enumerate(mbs)]
        )
    assert torch.equal(old, expected)
    with torch.no_grad():
        assert old.shape == update.completion_logps(module.model, rollout).shape


def test_a_gold_solution_with_a_token_the_policy_never_writes_is_refused(assets, data_kwargs):
    module = make_module(assets, loss=dict(sft_coef=0.1))
    module.configure_model()
    batch = first_batch(data_kwargs)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    adapter = module.adapter
    special = adapter.tokenizer.convert_ids_to_tokens(adapter.suppressed_token_ids(module.model)[0])
    solutions = [batch["solution"][0], format_solution("có", f"vì {special} ở đây")]
    with pytest.raises(ConfigError, match="contains a special token the policy never writes"):
        module.update.gold_supervision(rollout, solutions, [slice(0, B * G)])


def test_batches_without_solutions_are_refused_with_what_to_do(assets, data_kwargs):
    module = make_module(assets, loss=dict(sft_coef=0.1))
    module.configure_model()
    batch = first_batch(data_kwargs)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    with pytest.raises(ConfigError, match="carry no 'solution' field.*or set loss.sft_coef: 0"):
        module.update.gold_supervision(rollout, None, [slice(0, B * G)])


# --------------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(sft_coef=-0.1), "loss.sft_coef must be 0"),
        (dict(sft_decay_steps=100), r"with loss.sft_coef above 0"),
        (dict(sft_coef=0.1, sft_decay_steps=0), "it must be at least 1"),
    ],
)
def test_the_config_refuses_meaningless_gold_supervision(options, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**options)


def test_the_defaults_leave_gold_supervision_off():
    assert (LossConfig().sft_coef, LossConfig().sft_decay_steps) == (0.0, None)


def test_fit_help_lists_the_gold_supervision_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model.loss.sft_coef" in out and "--model.loss.sft_decay_steps" in out and "CHORD" in out


def test_the_gold_supervision_options_are_read_from_yaml(tmp_path, capsys):
    loss = demo_model_options(tmp_path, capsys, {"loss": {"sft_coef": 0.1, "sft_decay_steps": 50}})["loss"]
    assert (loss["sft_coef"], loss["sft_decay_steps"]) == (0.1, 50)
