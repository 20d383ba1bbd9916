"""The demo tokenizers: a byte-level BPE trained here on the synthetic dataset's text, wrapped as the Qwen2 fast
tokenizer that InternVL3 and Qwen2-VL use, with each family's special tokens, the answer-format tags as single
tokens, and each family's chat template."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from grpo_demo.scenes import make_dataset, question_templates
from grpo_lightning.convert_internvl import INTERNVL_CHAT_TEMPLATE
from grpo_lightning.convert_internvl import NAMED_TOKENS as INTERNVL_SPECIAL_TOKENS
from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, TAG_TOKENS, THINK_TAG, format_solution, render_prompt, tagged

__all__ = [
    "ANSWER_TAGS",
    "CHATML_TOKENS",
    "INTERNVL_CHAT_TEMPLATE",
    "INTERNVL_SPECIAL_TOKENS",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "default_corpus",
    "train_tokenizer",
]

#: The six answer-format tags, each a single (non-special) token of the demo tokenizers.
ANSWER_TAGS = TAG_TOKENS

#: Extra special tokens of the Qwen2-VL tokenizer (``Qwen2VLProcessor`` falls back to ``<|image_pad|>`` and
#: ``<|video_pad|>`` when the tokenizer has no ``image_token``/``video_token`` attribute).
QWEN2VL_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: The chat template of ``Qwen/Qwen2-VL-2B-Instruct`` (default system prompt, ``<|vision_start|><|image_pad|>
#: <|vision_end|>`` per image, which ``Qwen2VLProcessor`` expands to one ``<|image_pad|>`` per merged patch).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_GENERIC_VI_TEXT = (
    "Vì sao con mèo đang ngồi trên ghế? Con mèo đang ngồi trên ghế vì nó muốn nghỉ ngơi.",
    "Người đàn ông đang làm gì? Anh ấy đang chơi quần vợt trên sân.",
    "Đây có phải là một phòng bếp không? Đúng, có tủ lạnh, bếp và bồn rửa.",
    "Những người này đang ở đâu? Họ đang ở trên bãi biển gần nước.",
    "Thời tiết như thế nào? Trời nắng và bầu trời trong xanh.",
    "Chiếc xe buýt màu gì? Chiếc xe buýt có màu đỏ và trắng.",
    "Con chó đang đuổi theo cái gì? Con chó đang đuổi theo một quả bóng.",
    "Người phụ nữ đang cầm gì trong tay? Cô ấy đang cầm một chiếc ô.",
    "Có bao nhiêu người trong ảnh? Có ba người đang đứng cạnh nhau.",
    "Món ăn này là gì? Đây là một chiếc bánh pizza với nhiều phô mai.",
    "Đứa trẻ đang chơi môn thể thao nào? Cậu bé đang chơi bóng chày.",
    "Tại sao mặt đất lại trắng? Vì mặt đất được bao phủ bởi tuyết.",
    "Căn phòng này là phòng gì? Đây là phòng tắm vì có bồn cầu và vòi sen.",
    "Con vật nào đang ăn cỏ? Những con bò đang ăn cỏ trên cánh đồng.",
    "Chiếc máy bay đang bay hay đang đậu? Nó đang đậu ở sân bay.",
    "Cô gái đang ăn gì? Cô ấy đang ăn một chiếc bánh mì kẹp thịt.",
    "Vận động viên trượt tuyết mặc áo khoác màu đen và đội mũ bảo hiểm.",
    "Con ngựa đang kéo một chiếc xe gỗ trên con đường đất.",
    "Hai con hươu cao cổ đứng cạnh cây trong vườn thú.",
    "Người lướt sóng đang cưỡi trên một con sóng lớn ngoài biển.",
    "Chiếc đồng hồ trên tháp chỉ gần mười hai giờ trưa.",
    "Trên bàn có một chiếc máy tính xách tay, một con chuột và một cốc cà phê.",
    "Đèn giao thông đang chuyển sang màu xanh nên xe cộ được phép đi.",
    "Con voi đang phun nước lên lưng để làm mát cơ thể.",
    "Cậu bé đang thả diều trên bãi cỏ vào một ngày nhiều gió.",
    "Chiếc thuyền nhỏ neo đậu bên bờ sông yên tĩnh.",
    "Người đầu bếp đang cắt rau củ trong nhà bếp của nhà hàng.",
    "Chú gấu bông được đặt trên giường cạnh chiếc gối.",
    "Những chiếc xe máy đỗ thành hàng dài trên vỉa hè.",
    "Bà cụ đang đọc sách trên chiếc ghế dài trong công viên.",
    "Đĩa thức ăn có cơm, thịt gà, rau xanh và một lát chanh.",
    "Người chơi quần vợt vung vợt để đánh quả bóng màu vàng.",
    "Chiếc tàu hỏa đang chạy qua cây cầu bắc ngang dòng sông.",
    "Đàn chim bồ câu đang tìm thức ăn trên quảng trường.",
    "Có một chiếc bánh sinh nhật với nhiều ngọn nến đang cháy.",
    "Người đàn ông mặc vest và thắt cà vạt đang nói chuyện điện thoại.",
    "Con mèo đang nằm ngủ trên bàn phím của máy tính.",
    "Tấm biển dừng lại màu đỏ được đặt ở góc đường.",
    "Những quả chuối chín vàng được bày bán ở chợ.",
    "Cầu thủ bóng đá đang chạy theo quả bóng trên sân cỏ.",
    "Chiếc tủ lạnh được dán nhiều tờ giấy ghi chú và ảnh.",
    "Người phụ nữ đang dắt chó đi dạo dọc bờ hồ.",
    "Bầu trời nhiều mây và có vẻ như trời sắp mưa.",
    "Cô bé mặc váy hồng đang cầm một cây kem.",
    "Hai người đang chơi trò chơi điện tử trong phòng khách.",
    "Chiếc bình hoa trên bàn có hoa hồng màu đỏ và trắng.",
    "Có nhiều chiếc ô tô đang chờ đèn đỏ ở ngã tư.",
    "Anh ấy đang trượt ván trên một đoạn đường dốc.",
    "Ngọn núi phía xa được bao phủ bởi tuyết trắng.",
    "Con bò đang đứng giữa đường làm xe cộ phải dừng lại.",
    "Ổ bánh mì được cắt thành nhiều lát trên thớt gỗ.",
    "Chiếc điện thoại di động nằm cạnh cuốn sổ và cây bút.",
    "Vì sao người đàn ông đội mũ? Vì trời nắng và nóng.",
    "Tại sao đường phố lại ướt? Vì trời vừa mới mưa xong.",
    "Làm sao biết đây là mùa đông? Vì mọi người mặc áo ấm và có tuyết.",
    "You are a helpful assistant.",
)


def default_corpus(records: Iterable[dict[str, Any]] | None = None, *, seed: int = 0) -> list[str]:
    """The tokenizer training corpus: the synthetic dataset text (``records``, or the default dataset of ``seed``),
    every question/answer/explanation template, the answer-format prompt and example tagged completions, and a few
    generic Vietnamese VQA sentences. All NFC."""
    if records is None:
        splits, _ = make_dataset(seed=seed)
        records = [r for split in ("train", "val") for r in splits[split]]
    texts: list[str] = []
    for r in records:
        explanation = r["explanation"][0]
        texts.append(render_prompt(DEFAULT_PROMPT_TEMPLATE, r["question"]))
        texts.append(
            tagged(THINK_TAG, f"{r['question']} {' '.join(r['explanation'])}")
            + format_solution(r["answer"], explanation)
        )
        texts.extend(r["explanation"])
    texts.extend(question_templates())
    texts.extend(_GENERIC_VI_TEXT)
    texts.append(DEFAULT_PROMPT_TEMPLATE)
    return [unicodedata.normalize("NFC", t) for t in texts]


def _train_bpe(corpus: Iterable[str], vocab_size: int, removed: Sequence[str]) -> tuple[dict[str, int], list[tuple]]:
    """A byte-level BPE of ``vocab_size`` tokens on ``corpus`` with Qwen2's pipeline: its vocabulary (sorted by id)
    and merges. The ``removed`` tokens (specials and tags, matched whole before pre-tokenization) are taken out of
    the corpus first."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # A sorted, de-duplicated corpus fixes the input; the specials and tags are matched whole before
    # pre-tokenization, so they are removed from the BPE corpus.
    texts = sorted({unicodedata.normalize("NFC", t) for t in corpus})
    for token in removed:
        texts = [t.replace(token, " ") for t in texts]
    bpe.train_from_iterator(texts, trainer=trainer)

    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model_json["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    return vocab, merges


def train_tokenizer(
    corpus: Iterable[str],
    *,
    special_tokens: Sequence[str] = CHATML_TOKENS,
    model_specific_special_tokens: dict[str, str] | None = None,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    added_tokens: Sequence[str] = ANSWER_TAGS,
    vocab_size: int = 1000,
    chat_template: str | None = None,
    model_max_length: int = 4096,
):
    """Train a byte-level BPE on ``corpus`` and wrap it as a transformers ``Qwen2Tokenizer`` (the tokenizers-backed
    fast tokenizer of Qwen2 / InternVL3 / Qwen2-VL, so it reloads identically with ``AutoTokenizer``).

    The pipeline is Qwen2's (NFC normalizer, Qwen2 split regex, byte-level), so every NFC string round-trips
    exactly. Ids: the BPE tokens first (``0..``), then ``special_tokens`` in order, then the values of
    ``model_specific_special_tokens`` (named special tokens that processors read as tokenizer attributes, e.g.
    InternVL's ``context_image_token``), then the non-special ``added_tokens`` (each a single token that
    ``decode(..., skip_special_tokens=True)`` keeps). ``eos_token`` and ``pad_token`` (also the unk token, as in
    Qwen2) must be among ``special_tokens``; the others are registered as ``extra_special_tokens``. ``vocab_size``
    is the total; it is an upper bound: a small corpus runs out of merges earlier. Deterministic: the same corpus
    gives the same vocabulary and merges.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    named = dict(model_specific_special_tokens or {})
    specials = list(dict.fromkeys([*special_tokens, *named.values()]))
    for required in (eos_token, pad_token):
        if required not in special_tokens:
            raise ValueError(f"{required!r} must be one of special_tokens {list(special_tokens)}")
    extras = [t for t in special_tokens if t != pad_token and t not in named.values()]
    n_bpe = vocab_size - len(specials) - len(added_tokens)
    if n_bpe < 256:
        raise ValueError(f"vocab_size={vocab_size} leaves fewer than the 256 byte tokens for BPE")

    vocab, merges = _train_bpe(corpus, n_bpe, removed=(*specials, *added_tokens))
    for token in (*specials, *added_tokens):
        vocab[token] = len(vocab)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=pad_token,
        bos_token=None,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=named or extras,
        chat_template=chat_template,
        model_max_length=model_max_length,
    )
    if named and extras:
        tokenizer.add_special_tokens({"extra_special_tokens": extras}, replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    if len(tokenizer) != len(vocab) or any(tokenizer.convert_tokens_to_ids(t) != i for t, i in vocab.items()):
        raise RuntimeError("the wrapped tokenizer does not reproduce the trained vocabulary")
    return tokenizer
