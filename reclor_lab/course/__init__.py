"""Course machinery: the notebooks' exercises and their grading, apart from the QLoRA core.

``checks`` (the student-facing exercise checks), ``build`` (the student copies), ``judge`` and
``grade`` (grading a class), ``notebook`` (the notebooks' first cell), ``stored_outputs``
(nbconvert's filter of the notebooks' stored outputs).
"""
