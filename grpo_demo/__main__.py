"""``python -m grpo_demo --out assets/demo``: build the offline demo assets (see ``grpo_demo``)."""

import sys

from grpo_demo.build import main

if __name__ == "__main__":
    sys.exit(main())
