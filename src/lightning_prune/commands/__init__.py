"""One module per command; each is a plain function that ``PruneTrainer`` exposes as a subcommand.

What the dispatcher (``entry``) and the LightningCLI (``cli``) both say about the commands lives here, without
imports, so that ``--help`` stays fast.
"""

USAGE = "lightning-prune [-h] [--config CONFIG] {fit-free,evaluate,export,scorers} ..."
# The first docstring line of each command function (tests keep them equal).
COMMANDS = {
    "fit-free": "Prune the task's least important FFN neurons and save the smaller model.",
    "evaluate": "Evaluate the model on the task's evaluation examples.",
    "export": "Export a decoder LM to one GGUF file that llama.cpp runs.",
    "scorers": "List the installed scorers, their distribution and what they need.",
}
