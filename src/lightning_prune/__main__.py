from lightning_prune.entry import main

main()
