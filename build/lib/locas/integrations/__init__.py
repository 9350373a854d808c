"""Bridges to other tools. ``lm_eval_harness``: a ``locas`` model type for EleutherAI's lm-evaluation-harness."""
