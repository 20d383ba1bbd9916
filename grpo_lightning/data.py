"""ViVQA-X data: records, a dataset that holds image paths only, and the LightningDataModule.

Images are opened, converted to RGB and downscaled inside the dataloader workers (``__getitem__``),
so the main process only ever holds paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from grpo_lightning.prompts import DEFAULT_PROMPT_TEMPLATE, render_prompt

REQUIRED_FIELDS = ("question", "image_name", "answer", "explanation")


def load_vivqax_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a ViVQA-X JSON file (a list of records, or a dict keyed by question id)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such data file; check the data paths in your config.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: not valid JSON ({err.msg}).") from None
    if isinstance(data, dict):
        data = [{**record, "question_id": record.get("question_id", qid)} for qid, record in data.items()]
    records = []
    for index, record in enumerate(data):
        missing = [key for key in REQUIRED_FIELDS if key not in record]
        if missing:
            sample = record.get("question_id", f"#{index}")
            raise ValueError(f"{path}: sample {sample} lacks {', '.join(missing)}.")
        records.append(record)
    return records


class VQADataset(Dataset):
    """ViVQA-X samples with their prompt; the image is opened only when an item is fetched.

    Args:
        records: ViVQA-X records.
        image_dir: folder that holds the records' ``image_name`` files.
        prompt_template: template with ``{question}``.
        max_image_side: images larger than this on their longer side are downscaled (None: never).
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        image_dir: str | Path,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_image_side: int | None = None,
    ):
        self.records = records
        self.image_dir = Path(image_dir)
        self.prompt_template = prompt_template
        self.max_image_side = max_image_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image_path = self.image_dir / record["image_name"]
        image = Image.open(image_path).convert("RGB")
        if self.max_image_side is not None and max(image.size) > self.max_image_side:
            image.thumbnail((self.max_image_side, self.max_image_side))
        explanations = record["explanation"]
        explanations = [explanations] if isinstance(explanations, str) else list(explanations)
        return {
            "id": str(record.get("question_id", index)),
            "question": record["question"],
            "prompt": render_prompt(self.prompt_template, record["question"]),
            "image": image,
            "image_path": str(image_path),
            "answer": record["answer"],
            "explanations": explanations,
            "solution": f"<answer>{record['answer']}</answer><explain>{explanations[0]}</explain>",
            "answer_type": record.get("answer_type", ""),
        }


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise lists; images stay PIL images (the model adapter runs the processor)."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


class ViVQAXDataModule(L.LightningDataModule):
    """ViVQA-X train/val splits for GRPO.

    Args:
        train_file: ViVQA-X JSON of the training split.
        val_file: ViVQA-X JSON of the validation split (None: no validation).
        train_image_dir: folder of the training images (COCO ``train2014``).
        val_image_dir: folder of the validation images (COCO ``val2014``).
        batch_size: prompts per step on each process; each prompt is sampled ``num_generations`` times.
        val_batch_size: prompts per validation batch.
        num_workers: dataloader worker processes (images are decoded there).
        prompt_template: the prompt, with ``{question}`` where the question goes.
        max_image_side: downscale larger images to this side in the workers (None: keep).
        shuffle: shuffle the training prompts every epoch.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        train_image_dir: str = "data/coco/train2014",
        val_image_dir: str = "data/coco/val2014",
        batch_size: int = 4,
        val_batch_size: int = 8,
        num_workers: int = 0,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_image_side: int | None = 1024,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        render_prompt(prompt_template, "")  # fail at construction on a template without {question}
        self.train_set: VQADataset | None = None
        self.val_set: VQADataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = VQADataset(
                load_vivqax_records(hp.train_file), hp.train_image_dir, hp.prompt_template, hp.max_image_side
            )
        if hp.val_file is not None and self.val_set is None:
            self.val_set = VQADataset(
                load_vivqax_records(hp.val_file), hp.val_image_dir, hp.prompt_template, hp.max_image_side
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:  # training without validation
            return []
        return self._loader(self.val_set, self.hparams.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def _eval_loader(self, stage: str) -> DataLoader:
        if self.val_set is None:
            raise ValueError(f"`{stage}` needs held-out data: set `data.val_file` (and `data.val_image_dir`).")
        return self._loader(self.val_set, self.hparams.val_batch_size, shuffle=False)

    def _loader(self, dataset: VQADataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.hparams.num_workers > 0,
        )
