"""Learning a memory at test time: settings (``config``), one optimisation step (``step``), the learner
protocol (``learner``) and the methods' registry (``learners``, ``mlp_learner``), the objective
registry (``objectives``), the streaming loop (``stream``: score, then learn, window by window),
segment training (``segments``: a conversation session by session, a document), and the
Locas-MLP write and NL-SVD compression (``write``, ``nlsvd``). Imports ``core``, ``text`` and
``probes``; never ``eval`` or ``cli``."""
