"""``python -m grpo_lightning.report --rollouts LOG_DIR``: the rollout browser of a training run."""

import sys

from grpo_lightning.report.rollouts_page import main

sys.exit(main())
