"""The page machinery both HTML pages share: a self-contained page around a body (:func:`_page`), the CSS and
JavaScript files it embeds (:data:`PAGE_ASSETS`, package data in ``report_assets/``), escaping, and image lookup and
thumbnails as ``data:`` URLs."""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import re
from importlib import resources
from pathlib import Path
from typing import Any

from grpo_lightning.images import load_rgb

#: The longer side of the embedded thumbnails, in pixels.
THUMBNAIL_SIDE = 192

#: The folder of the package ``grpo_lightning`` that holds the pages' CSS and JavaScript, shipped as package data.
ASSETS_DIR = "report_assets"

#: Each page's files in :data:`ASSETS_DIR`, in the order they are embedded: its style sheets (the rules both pages
#: share first), then its one script.
PAGE_ASSETS = {
    "evaluation": ("page.css", "evaluation.css", "evaluation.js"),
    "rollouts": ("page.css", "rollouts.css", "rollouts.js"),
}


def coco_image_id(record: dict[str, Any]) -> int | None:
    """The COCO image id of a record: its ``image_id``, or else read from a VQA-style ``question_id``.

    VQA (and so ViVQA-X) question ids are ``image_id * 1000 + k``: question "262284001" is about image 262284.
    """
    image_id = str(record.get("image_id", ""))
    if image_id.isdigit():
        return int(image_id)
    question_id = str(record.get("question_id", ""))
    if question_id.isdigit() and len(question_id) > 3:
        return int(question_id[:-3])
    return None


def image_file_names(record: dict[str, Any]) -> list[str]:
    """File names to look for, best first: ``image_name``, then COCO 2014 val/train and COCO 2017 naming."""
    names = []
    if isinstance(record.get("image_name"), str) and record["image_name"]:
        names.append(Path(record["image_name"]).name)  # a bare name: never a path out of the folder
    image_id = coco_image_id(record)
    if image_id is not None:
        names += [f"COCO_val2014_{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
    return names


def find_image(images_dir: Path, record: dict[str, Any]) -> Path | None:
    """The record's image in ``images_dir`` (see :func:`image_file_names`), or None when there is none."""
    for name in image_file_names(record):
        path = images_dir / name
        if path.is_file():
            return path
    return None


def thumbnail_data_uri(path: Path, max_side: int = THUMBNAIL_SIDE) -> str:
    """A ``data:image/jpeg;base64,...`` thumbnail of the image at ``path``, as the model saw it (:func:`load_rgb`).

    Raises:
        OSError: when the file is not a readable image.
    """
    image = load_rgb(path)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_key(column: str) -> str:
    """The key of a score column in the page (attributes, the ``sort=`` fragment): "BLEU-4" -> "bleu-4"."""
    return re.sub(r"[^a-z0-9]+", "-", column.lower()).strip("-")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shown(text: Any) -> str:
    """``text`` escaped, or "(empty)" (marked as such) when it is empty or only whitespace, so that an answer the
    model did not give is seen rather than leaving two labels side by side."""
    text = "" if text is None else str(text)
    return _e(text) if text.strip() else "<span class='empty'>(empty)</span>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


@functools.cache
def asset_text(name: str) -> str:
    """The text of the file ``name`` in :data:`ASSETS_DIR`, read once per process (every page embeds it)."""
    return (resources.files("grpo_lightning") / ASSETS_DIR / name).read_text(encoding="utf-8")


def _page(title: str, body: str, kind: str) -> str:
    """A self-contained page: ``body`` under the title, with the style sheets and then the script that
    :data:`PAGE_ASSETS` names for ``kind``; that script is the one its Content Security Policy lets run (by its
    SHA-256); images only as data: URLs, nothing fetched."""
    names = PAGE_ASSETS[kind]
    # each embedded file starts on a line of its own in the page's source; the hash covers that newline too, since
    # it must match the <script> element's text exactly
    style = "\n" + "".join(asset_text(name) for name in names if name.endswith(".css"))
    script = "\n" + "".join(asset_text(name) for name in names if name.endswith(".js"))
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!DOCTYPE html><html lang='vi'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{style}</style></head><body>"
        f"<h1>{_e(title)}</h1>{body}<script>{script}</script></body></html>"
    )
