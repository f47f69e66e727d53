from lightning_prune.cli import main

main()
