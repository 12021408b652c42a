"""A run's results read back: ``analysis`` (per question type, EASY/HARD) and ``baselines``
(what guessing, word overlap and the untrained model score), with ``letters`` (the answer
letters as tokens, and the letter head that starts the classifier as the zero-shot scorer) and
``qtypes`` (ReClor's question types)."""
