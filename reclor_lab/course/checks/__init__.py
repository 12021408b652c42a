"""Self-checks for the notebooks' exercises.

Each ``check_X(fn, ...)`` runs a student's function on small test cases and prints ONE line:

* ``✅ Exercise N (title): correct.``: the student's function is returned;
* ``⏳ Exercise N (title): not done yet …``: the function still raises ``NotImplementedError``;
* ``❌ Exercise N (title): <which case failed, what was expected in kind, a hint> …``.

On anything but a pass the check returns a :class:`Fallback`: it runs the package's reference
implementation, so the cells after an unsolved exercise still run, but it remembers the student's
own function. Checking the name again therefore judges the student's code (still ⏳ or ❌), never
the reference: a ✅ always means the student's own function passed. :func:`summary` (the last cell
of each student notebook) re-judges every exercise of the notebook as the functions stand. A check
never prints the solution itself.

>>> format_record = check_format_record(format_record)       # doctest: +SKIP
✅ Exercise 1 (format a record): correct.

``reclor-lab course grade`` does not rely on any of this running in the student's kernel: it
runs the notebook's final ``def`` of each exercise in an OS sandbox on the inputs of the test a
check builds (:func:`build_test`) and on hidden cases, and replays that test outside the sandbox
on the answers that came back (:mod:`reclor_lab.course.grade`). A new exercise adds its entry
to :data:`EXERCISES` and to ``reclor_lab.course.grading.exercises.SPECS``.

**Return types, the same rule in every check.** A number may come back as a Python number or as a
one-element tensor (exercise 10 excepted: a kept loss tensor holds the batch's graph). A collection
must be the kind the exercise asks for, because the cells after the check use it as that kind: a
list where a list is asked (exercise 2), a tensor where a tensor is asked (exercises 3, 4, 7, 9).
The other kind fails, naming the conversion (:func:`_kind_problem`). A failure shows the inputs
that broke the answer.

The test records below are hand-written (the same as ``tests/fixtures/mini``), never ReClor text.
"""

# The checks live one module per notebook (nb01 … nb06) beside what they share (common); every
# name is re-exported here, so that notebooks and the grader say `checks.check_X`.
from reclor_lab.course.checks.common import (  # noqa: F401
    MAX_GRAD_NORM,
    RTOL,
    FALLBACK,
    CHECK_RECORDS,
    _Fail,
    Fallback,
    _REFERENCES,
    _own,
    EXERCISES,
    NUMBER,
    _CHECKED,
    _judge,
    _NEXT,
    _run,
    _TESTS,
    build_test,
    whose,
    note,
    summary,
    _notebook_namespace,
    _name,
    _short,
    _close,
    _kind_problem,
)
from reclor_lab.course.checks.nb01 import (  # noqa: F401
    reference_format_record,
    _first_difference,
    _format_hint,
    check_format_record,
    reference_class_weights,
    _WEIGHT_CASES,
    _weights_hint,
    check_class_weights,
    reference_last_token_index,
    _pooling_cases,
    _pooling_hint,
    _wrong_row,
    check_last_token_index,
)
from reclor_lab.course.checks.nb02 import (  # noqa: F401
    reference_nf4_block,
    _nf4_cases,
    _nf4_hint,
    check_nf4_block,
    reference_lora_targets,
    check_lora_targets,
)
from reclor_lab.course.checks.nb03 import (  # noqa: F401
    reference_count_lora_params,
    _LLAMA2_7B_LAYER,
    _COUNT_CASES,
    _count_hint,
    check_count_lora_params,
    reference_lora_forward,
    _ALPHA_FACTORS,
    _ReplayDropout,
    _lora_hint,
    check_lora_forward,
    LLAMA2_7B,
    LLAMA2_13B,
    NF4_DQ_BITS,
    TRAINED_BYTES,
    KEPT_BYTES,
    CHECKPOINT_BYTES,
    _memory_terms,
    reference_qlora_memory,
    _MEMORY_CASES,
    _memory_hint,
    check_qlora_memory,
)
from reclor_lab.course.checks.nb03 import (  # noqa: F401  (exercise 14)
    ReferenceLoRALinear,
    lora_linear_facts,
    reference_lora_linear_facts,
    check_lora_linear,
    _lora_linear_problem,
)
from reclor_lab.course.checks.nb03 import (  # noqa: F401  (exercise 15)
    QLORA_R,
    QLORA_ALPHA,
    QLORA_DROPOUT,
    QLORA_CHECK_DTYPE,
    reference_qlora_model,
    qlora_model_facts,
    reference_qlora_model_facts,
    check_qlora_model,
    _qlora_model_problem,
)
from reclor_lab.course.checks.nb04 import (  # noqa: F401
    reference_weighted_ce,
    _ce_cases,
    _ce_inputs,
    _ce_hint,
    check_weighted_ce,
    reference_train_step,
    _CHECK_LR,
    _CHECK_SEED,
    _checksum,
    check_train_step,
    _no_change_hint,
    _unclipped_step,
    _plain_loss,
)
from reclor_lab.course.checks.nb04 import (  # noqa: F401
    LRSchedule,
    reference_train_epoch,
    EPOCH_LOSS_RTOL,
    EPOCH_UPDATE_RTOL,
    _update_norm,
    _epoch_close,
    _epoch_mistakes,
    check_train_epoch,
)
from reclor_lab.course.checks.nb05 import (  # noqa: F401
    reference_accuracy,
    _ACCURACY_CASES,
    _accuracy_hint,
    check_accuracy,
    reference_evaluation_pass,
    _eval_result,
    _eval_logits,
    _EVAL_WEIGHTS,
    _eval_cases,
    _eval_hint,
    check_evaluation_pass,
)
from reclor_lab.course.checks.nb06 import (  # noqa: F401
    reference_rule_baseline,
    RULE_CASES,
    _RULE_SEED,
    RULE_FLOOR,
    RULE_HARD_FLOOR,
    _rule_cases,
    check_rule_baseline,
)

__all__ = [
    "CHECK_RECORDS",
    "EXERCISES",
    "Fallback",
    "build_test",
    "note",
    "whose",
    "MAX_GRAD_NORM",
    "check_accuracy",
    "check_class_weights",
    "check_evaluation_pass",
    "check_rule_baseline",
    "check_count_lora_params",
    "check_format_record",
    "check_lora_targets",
    "check_train_step",
    "check_train_epoch",
    "check_weighted_ce",
    "reference_accuracy",
    "reference_class_weights",
    "reference_count_lora_params",
    "reference_evaluation_pass",
    "reference_rule_baseline",
    "reference_format_record",
    "reference_lora_targets",
    "reference_train_step",
    "reference_train_epoch",
    "reference_weighted_ce",
    "summary",
]
