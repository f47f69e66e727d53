"""Writing a (pruned) model for the runtimes users serve it with: a Hugging Face folder (``folder``), and for decoder
LMs one GGUF file that llama.cpp runs (``gguf``: imported on use, it needs the optional ``gguf`` package)."""

from lightning_prune.export.folder import save_model_folder

__all__ = ["save_model_folder"]
