"""A run's results read back: ``analysis`` (per question type, EASY/HARD) and ``baselines``
(what guessing, word overlap and the untrained model score)."""
