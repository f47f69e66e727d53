"""The GGUF data types the export writes: one declaration for ``fit-free --export_gguf``, ``export --dtype`` and the
writer (a module of its own: the writer needs the optional ``gguf`` package, the options do not)."""

from typing import Literal

GGUFDtype = Literal["f16", "q8_0", "f32"]
