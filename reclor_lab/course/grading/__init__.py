"""The grader's side of the sandbox's wall: the exercises' references, hidden cases and
comparisons (:mod:`~reclor_lab.course.grading.exercises`) and the replay of each check on the
answers a sandbox sent back (:mod:`~reclor_lab.course.grading.replay`).

Never visible inside a grading sandbox: :mod:`reclor_lab.course.sandbox` covers this folder
with an empty one, and a test reads it from inside to make sure.
"""
