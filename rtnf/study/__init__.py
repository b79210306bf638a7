"""A multi-session study: ``study.toml``, its crash-safe state, arms under codes, yoked sham feedback.

``studyfile`` reads the study file; ``state`` keeps the study's state on disk
(atomic writes, a journal); ``progress`` folds the journal into each
participant's next run; ``arms`` allocates participants to arm codes and
writes the blinding key; ``sham`` and ``armfeedback`` make a feedback run's
arm without changing its config or outputs; ``runner`` prepares and runs a
step; ``command`` is ``rtnf study``.
"""
