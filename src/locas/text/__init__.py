"""Text: token ids (``tokens``), sentences and chunks (``sentences``), prompts (``prompts``), answer
metrics (``metrics``) and the one decoder with its stop tokens (``decoding``). Imports only ``core``."""
