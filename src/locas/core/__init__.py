"""The core: the memory module (``memory``), the architecture registry (``arch``), initialisers
(``init``), exact fusion (``fuse``), the model wrapper (``model``), memory files (``files``) and model
resolution with the embedded default model (``hub``). Imports nothing else from locas but ``errors``."""
