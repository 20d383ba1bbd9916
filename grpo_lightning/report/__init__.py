"""Self-contained HTML pages: the evaluation report of a predictions file and the rollout browser of a training run.

Each page embeds everything (CSS, a small vanilla script, images as base64 JPEG thumbnails), loads nothing from the
network, and escapes every piece of text, since predictions and completions are model output. A Content Security
Policy allows only the page's own script (by its SHA-256), so even an unescaped ``<script>`` could not run. The CSS
and JavaScript are files of their own in ``grpo_lightning/report_assets/`` (package data, see :data:`PAGE_ASSETS`),
so that they can be read, linted and diffed.

The modules: :mod:`~grpo_lightning.report.page` (what both pages share: the page around a body, escaping, images),
:mod:`~grpo_lightning.report.evaluation_page` and :mod:`~grpo_lightning.report.rollouts_page` (one page each, the
latter with :mod:`~grpo_lightning.report.rollout_trends`, its charts over the steps). The charts are SVG drawn by
:mod:`grpo_lightning.svg_plots`.

The evaluation report (:func:`render_report`, written by ``python -m grpo_lightning.evaluate PRED.json --html
REPORT.html``) opens with what it evaluates (the predictions file, and the model, checkpoint, data file and date from
the metadata file beside it), the answer accuracy under every protocol side by side, the explanation metrics, and
charts of both; then it shows one row per sample. Rows can be filtered by correctness and answer type and sorted by any
per-sample score, with the controls at the top or through the address's fragment, which the page reads at load and
keeps up to date: ``report.html#filter=incorrect&type=yes/no&sort=cider:asc`` (``filter``: all, correct, incorrect;
``type``: all or an answer type; ``sort``: ``index`` or a score key and ``asc``/``desc``).

The rollout browser (:func:`render_rollouts`) shows the records that ``logging.rollouts_every_n_steps`` has a run
write (:mod:`grpo_lightning.rollout_log`), one page per run: charts of the run over its logged steps, each point a link
to its step, then the groups of one step at a time, each with its image and its G completions sorted by advantage,
filtered by reward component::

    python -m grpo_lightning.report --rollouts lightning_logs/demo/version_0   # writes <log_dir>/rollouts.html

Its fragment: ``#step=20&component=format&min=0.5&max=1&status=trained`` (``component``: ``reward`` or a reward
function's name; ``status``: all, trained, filtered).
"""

from grpo_lightning.report.evaluation_page import render_report, write_report
from grpo_lightning.report.page import (
    ASSETS_DIR,
    PAGE_ASSETS,
    THUMBNAIL_SIDE,
    asset_text,
    coco_image_id,
    find_image,
    image_file_names,
    score_key,
    thumbnail_data_uri,
)
from grpo_lightning.report.rollouts_page import (
    RolloutsError,
    find_rollout_files,
    main,
    read_rollouts,
    render_rollouts,
    write_rollouts_page,
)

__all__ = [
    "ASSETS_DIR",
    "PAGE_ASSETS",
    "THUMBNAIL_SIDE",
    "RolloutsError",
    "asset_text",
    "coco_image_id",
    "find_image",
    "find_rollout_files",
    "image_file_names",
    "main",
    "read_rollouts",
    "render_report",
    "render_rollouts",
    "score_key",
    "thumbnail_data_uri",
    "write_report",
    "write_rollouts_page",
]
