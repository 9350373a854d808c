"""Scoring and reports only: PG-19 (``pg19``), LoCoMo (``locomo``), MMLU (``mmlu``), forgetting
(``retention``), held-out recall (``recall``), tables and plots (``report``). Training goes through
``locas.learn``."""
