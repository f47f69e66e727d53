"""One module per command; each is a plain function that ``PruneTrainer`` exposes as a subcommand."""
