"""The explanation reward: CLIPScore with a tiny random-weight open_clip model built offline, the weighted mean with
CIDEr-D, its set-up (what it loads, and when), and the errors that tell the user what to do."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from PIL import Image

from examples.reward_plugin import brevity
from grpo_demo import write_tiny_clip_config
from grpo_lightning.errors import ConfigError, UserError
from grpo_lightning.rewards import explanation as explanation_module
from grpo_lightning.rewards import get_reward, score_completions
from grpo_lightning.rewards.clip_score import ClipLoadError, clip_score, load_clip_model
from grpo_lightning.rewards.explanation import ExplanationReward

REFS = {
    "cat": ["con mèo đang ngồi trên ghế", "một con mèo màu trắng ngồi trên cái ghế gỗ"],
    "bus": ["chiếc xe buýt màu đỏ đang chạy trên đường", "xe buýt đỏ trên phố"],
    "dog": ["hai con chó đang chơi trên bãi cỏ xanh"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A corpus file, three images, and the tiny CLIP config, in one temporary folder."""
    root = tmp_path_factory.mktemp("explanation")
    records = [
        {"question": "?", "image_name": f"{name}.png", "answer": "a", "explanation": refs, "question_id": name}
        for name, refs in REFS.items()
    ]
    corpus = root / "train.json"
    corpus.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    images = {}
    for index, (name, colour) in enumerate([("cat", (240, 240, 240)), ("bus", (200, 20, 20)), ("dog", (20, 160, 40))]):
        image = Image.new("RGB", (40 + 8 * index, 36), colour)
        image.putpixel((3, 4), (0, 0, 0))
        images[name] = str(root / f"{name}.png")
        image.save(images[name])
    clip = str(write_tiny_clip_config(root / "tiny-test-clip.json"))
    torch.manual_seed(0)  # the random weights, hence the scores, are the same in every run
    load_clip_model(clip, "random", "cpu")
    return {"corpus": str(corpus), "cache": str(root / "cache"), "images": images, "clip": clip}


def clip_only(world, **options) -> ExplanationReward:
    return ExplanationReward(
        cider_weight=0.0, clip_weight=1.0, clip_model=world["clip"], clip_pretrained="random", device="cpu", **options
    )


def test_clip_score_matches_hessel_et_al_in_float64():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    texts = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    texts[0] = -images[0]  # cosine -1: clipped to 0
    texts[1] = 3 * images[1]  # cosine 1, whatever the norms
    expected = []
    for a, b in zip(images.tolist(), texts.tolist(), strict=True):
        cos = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        expected.append(2.5 * max(cos, 0.0))
    torch.testing.assert_close(clip_score(images, texts), torch.tensor(expected, dtype=torch.float64))
    assert clip_score(images, texts)[:2].tolist() == pytest.approx([0.0, 2.5])
    torch.testing.assert_close(clip_score(images, texts, weight=1.0), clip_score(images, texts) / 2.5)


def test_clipscore_is_cos_clipped_at_zero_computed_by_hand(world):
    reward = clip_only(world)
    texts = ["con mèo đang ngồi trên ghế", "xe buýt đỏ", "hai con chó", "một con mèo"]
    paths = [world["images"]["cat"], world["images"]["bus"], world["images"]["dog"], world["images"]["cat"]]
    scores = reward([f"<explain>{t}</explain>" for t in texts], image_path=paths, id=list("abcd"))

    clip = reward.clip()
    with torch.inference_mode():
        pixels = torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])
        image_embeddings = clip.model.encode_image(pixels).double()
        text_embeddings = clip.model.encode_text(clip.tokenizer(texts)).double()
    cos = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
    assert scores == pytest.approx(cos.clamp(min=0).tolist(), abs=1e-6)
    assert all(0.0 <= s <= 1.0 for s in scores) and max(scores) > 0.05
    # The batch size is a memory knob, not a change of result.
    assert clip_only(world, batch_size=1)(
        [f"<explain>{t}</explain>" for t in texts], image_path=paths
    ) == pytest.approx(scores, abs=1e-6)


def test_the_clip_model_is_loaded_once_lazily_and_each_image_embedded_once(world, monkeypatch):
    first, second = clip_only(world), clip_only(world)
    assert first._clip is None  # nothing loaded at construction (the module builds rewards before fit)
    embedded = []
    original = type(first.clip()).embed_images
    monkeypatch.setattr(
        type(first.clip()),
        "embed_images",
        lambda self, images, bs: embedded.append(len(images)) or original(self, images, bs),
    )
    group = 8
    completions = [f"<explain>giải thích {j}</explain>" for j in range(2 * group)]
    paths = [world["images"]["cat"]] * group + [world["images"]["bus"]] * group
    assert len(second(completions, image_path=paths)) == 2 * group
    assert first.clip() is second.clip() is load_clip_model(world["clip"], "random", "cpu")
    assert embedded == [2]  # 16 completions, 2 distinct images
    state = pickle.loads(pickle.dumps(first))
    assert state._clip is None and state.clip_model == world["clip"]  # pickles carry configuration, not weights


def test_weighted_mean_of_cider_and_clip(world):
    options = {"corpus_file": world["corpus"], "cache_dir": world["cache"], "clip_model": world["clip"]}
    options |= {"clip_pretrained": "random", "device": "cpu"}
    reward = ExplanationReward(cider_weight=3.0, clip_weight=1.0, **options)
    texts = [REFS["cat"][0], "chiếc xe màu đỏ", "con mèo", "ghế gỗ trên đường"]
    refs = [REFS["cat"], REFS["bus"], REFS["cat"], REFS["bus"]]
    paths = [world["images"][name] for name in ("cat", "bus", "cat", "bus")]
    completions = [f"<think>.</think><answer>.</answer><explain>{t}</explain>" for t in texts]
    scores = reward(completions, explanations=refs, image_path=paths)
    cider = reward.cider_scores(texts, refs)
    clip = reward.clip_scores(texts, paths)
    assert scores == pytest.approx([(3 * c + 1 * s) / 4 for c, s in zip(cider, clip, strict=True)], abs=1e-12)
    assert cider[0] > cider[2] > 0 and all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize(
    ("completion", "references", "expected"),
    [
        ("<think>x</think><answer>có</answer>", REFS["cat"], 0.0),  # no <explain>
        ("<explain>   </explain>", REFS["cat"], 0.0),  # an empty one
        ("<explain>con mèo</explain>", [], None),  # no references and no CLIP: no opinion
        ("<explain>con mèo đang ngồi trên ghế</explain>", REFS["cat"], "positive"),
    ],
)
def test_cider_only_edge_cases(world, completion, references, expected):
    reward = ExplanationReward(cider_weight=1.0, clip_weight=0.0, corpus_file=world["corpus"], cache_dir=world["cache"])
    (score,) = reward([completion], explanations=[references])
    if expected == "positive":
        assert 0.0 < score <= 1.0
    else:
        assert score == expected


def test_no_corpus_is_read_without_cider_and_no_clip_is_loaded_without_clip(world, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loaded although its weight is 0")

    with monkeypatch.context() as patch:
        patch.setattr(explanation_module, "load_clip_model", refuse)
        cider_only = ExplanationReward(
            cider_weight=1.0, clip_weight=0.0, corpus_file=world["corpus"], cache_dir=world["cache"]
        )
        assert cider_only(["<explain>xe buýt đỏ</explain>"], explanations=[REFS["bus"]])[0] > 0
    with monkeypatch.context() as patch:
        patch.setattr(explanation_module, "corpus_document_frequency", refuse)
        reward = clip_only(world)  # corpus_file None is fine with cider_weight 0
        assert len(reward(["<explain>xe buýt đỏ</explain>"], image_path=[world["images"]["bus"]])) == 1


def test_cider_scale_maps_into_0_1(world):
    plain = ExplanationReward(cider_weight=1.0, clip_weight=0.0, corpus_file=world["corpus"], cache_dir=world["cache"])
    scaled = ExplanationReward(
        cider_weight=1.0, clip_weight=0.0, corpus_file=world["corpus"], cache_dir=world["cache"], cider_scale=0.5
    )
    completions = [f"<explain>{REFS['bus'][0]}</explain>", "<explain>xe buýt</explain>", "<explain>bầu trời</explain>"]
    raw = plain(completions, explanations=[REFS["bus"]] * 3)
    assert scaled(completions, explanations=[REFS["bus"]] * 3) == pytest.approx([min(r * 20, 1.0) for r in raw])
    assert raw[0] > raw[1] > raw[2] == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cider_weight": 0.5}, "set model.rewards.kwargs.explanation.corpus_file"),
        ({"corpus_file": "/nonexistent/train.json"}, "corpus_file '/nonexistent/train.json' does not exist; set"),
        ({"cider_weight": 0.0, "clip_weight": 0.0}, "not both 0"),
        ({"cider_weight": -1.0, "clip_weight": 1.0}, "must be >= 0"),
        ({"cider_weight": 0.0, "cider_scale": 0.0}, "cider_scale must be > 0"),
        ({"cider_weight": 0.0, "batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_configuration_errors(options, message):
    # ConfigError: the command line shows it as one message, since the module builds its rewards from the config
    with pytest.raises(ConfigError, match=message):
        ExplanationReward(**options)


@pytest.mark.parametrize(
    ("cider_weight", "clip_weight", "expected"),
    [
        (1.0, 1.0, ["corpus_document_frequency", "load_clip_model"]),
        (1.0, 0.0, ["corpus_document_frequency"]),
        (0.0, 1.0, ["load_clip_model"]),
    ],
)
def test_setup_loads_what_the_weights_need_once(world, monkeypatch, cider_weight, clip_weight, expected):
    loads = []

    def counted(function):
        return lambda *args: loads.append(function.__name__) or function(*args)

    monkeypatch.setattr(explanation_module, "load_clip_model", counted(load_clip_model))
    monkeypatch.setattr(
        explanation_module, "corpus_document_frequency", counted(explanation_module.corpus_document_frequency)
    )
    options = {"corpus_file": world["corpus"], "cache_dir": world["cache"], "clip_model": world["clip"]}
    reward = ExplanationReward(cider_weight, clip_weight, clip_pretrained="random", device="cpu", **options)
    assert loads == []  # nothing at construction: the module builds its rewards long before a fit
    reward.setup()
    reward.setup()  # the second time: nothing
    assert loads == expected
    # scoring uses what the set-up loaded, and loads nothing more
    scores = reward(["<explain>con mèo</explain>"], explanations=[REFS["cat"]], image_path=[world["images"]["cat"]])
    assert loads == expected and 0.0 < scores[0] <= 1.0


@pytest.mark.parametrize(
    ("pretrained", "cause"),
    [
        ("missing-file", "the file does not exist"),
        ("no_such_tag", r"it is neither a file nor one of the model's published open_clip tags \(none\)"),
    ],
)
def test_a_clip_model_that_cannot_load_fails_in_setup_with_what_to_do(world, tmp_path, pretrained, cause):
    if pretrained == "missing-file":
        pretrained = str(tmp_path / "no.pt")
    reward = ExplanationReward(cider_weight=0.0, clip_model=world["clip"], clip_pretrained=pretrained)
    with pytest.raises(ClipLoadError, match=rf"cannot load the CLIP model .*: {cause} .*clip_pretrained to a local"):
        reward.setup()
    assert isinstance(ClipLoadError("x"), UserError) and isinstance(ClipLoadError("x"), RuntimeError)


def test_unloadable_weights_say_what_to_do(world, tmp_path, monkeypatch):
    reward = ExplanationReward(cider_weight=0.0, clip_model=world["clip"], clip_pretrained=str(tmp_path / "no.pt"))
    with pytest.raises(ClipLoadError, match=r"cannot load the CLIP model .*clip_pretrained to a local checkpoint"):
        reward(["<explain>con mèo</explain>"], image_path=[world["images"]["cat"]])

    # The default multilingual model, offline with an empty hub cache: the weights cannot be fetched.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    default = ExplanationReward(cider_weight=0.0)
    with pytest.raises(
        ClipLoadError, match=r"'xlm-roberta-base-ViT-B-32' with weights 'laion5b_s13b_b90k': HF_HUB_OFFLINE"
    ):
        default.setup()

    no_tags = ExplanationReward(cider_weight=0.0, clip_model=world["clip"])
    with pytest.raises(ConfigError, match="has no published open_clip weights; set .*clip_pretrained"):
        no_tags(["<explain>con mèo</explain>"], image_path=[world["images"]["cat"]])
    no_file = ExplanationReward(cider_weight=0.0, clip_model=str(tmp_path / "no-such-clip.json"))
    with pytest.raises(ConfigError, match=r"no such open_clip model-config file; set .*explanation.clip_model"):
        no_file.setup()


def test_a_missing_image_is_reported_with_the_reward_name_and_sample_id(world):
    reward = clip_only(world)
    paths = [world["images"]["cat"], "/nonexistent/COCO_train2014_000000000009.jpg"]
    with pytest.raises(RuntimeError, match=r"Reward 'explanation' raised FileNotFoundError: .*sample id q-9"):
        score_completions(
            [("explanation", reward)],
            ["<explain>con mèo</explain>", "<explain>con chó</explain>"],
            ["", ""],
            {"id": ["q-1", "q-9"], "image_path": paths, "explanations": [REFS["cat"], REFS["dog"]]},
        )


def test_registry_builds_the_class_with_options_and_binds_function_options(world):
    reward = get_reward("explanation", cider_weight=1.0, clip_weight=0.0, corpus_file=world["corpus"])
    assert isinstance(reward, ExplanationReward) and reward.cider_weight == 1.0
    with pytest.raises(ValueError, match=r"Reward 'explanation': invalid options \['cider_wieght'\]"):
        get_reward("explanation", cider_wieght=1.0)
    plugin = get_reward("examples.reward_plugin:brevity", max_words=3)
    completions = ["<explain>một hai ba</explain>", "<explain>một hai ba bốn</explain>", "không có thẻ"]
    assert plugin(completions, ["", "", ""]) == pytest.approx([1.0, 2 / 3, 0.0])
    assert get_reward("examples.reward_plugin:brevity") is brevity


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_runs_on_the_current_cuda_device_by_default_and_agrees_with_the_cpu(world):
    texts = ["con mèo đang ngồi trên ghế", "xe buýt đỏ", "hai con chó", "một con mèo"]
    paths = [world["images"][name] for name in ("cat", "bus", "dog", "cat")]
    completions = [f"<explain>{t}</explain>" for t in texts]
    torch.manual_seed(0)  # the same random weights as the CPU model built by the fixture
    on_gpu = ExplanationReward(cider_weight=0.0, clip_model=world["clip"], clip_pretrained="random")  # device None
    scores = on_gpu(completions, image_path=paths)
    assert next(on_gpu.clip().model.parameters()).device == torch.device("cuda", torch.cuda.current_device())
    # TF32 convolutions on the GPU: agreement to 1e-3, not to float32 rounding.
    assert scores == pytest.approx(clip_only(world)(completions, image_path=paths), abs=1e-3)
