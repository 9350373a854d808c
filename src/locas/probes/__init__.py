"""Probes about a text for the self-study objective: settings (``config``), the five probe families
(``families``), the teacher's answers (``teacher``) and cached probe sets (``cache``).
Imports ``text`` and ``core``, never ``learn`` or above."""
