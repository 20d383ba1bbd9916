from grpo_lightning.cli import main

main()
