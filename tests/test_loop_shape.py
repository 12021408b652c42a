"""The training loop stays readable: ``fit`` (the loop notebook 04 prints) is the loop on one
screen, a body of at most 60 lines and a cyclomatic complexity of at most 15, read from the
real source, and the forward pass, the loss, backward, clipping, the optimizer step, the
schedule, the evaluation and the checkpoint are lines of it, not calls further down."""

from __future__ import annotations

import ast
import inspect

from reclor_lab import train

MAX_BODY_LINES = 60
MAX_COMPLEXITY = 15


def _function(fn) -> ast.FunctionDef:
    return ast.parse(inspect.getsource(fn)).body[0]


def body_lines(node: ast.FunctionDef) -> int:
    """Source lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1


def complexity(node: ast.AST) -> int:
    """McCabe's count: 1, plus one per branch point (if, loop, conditional expression, except
    handler, comprehension and its conditions, match case) and per extra operand of and / or."""
    n = 1
    for sub in ast.walk(node):
        if isinstance(sub, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler,
                            ast.match_case)):
            n += 1
        elif isinstance(sub, ast.comprehension):
            n += 1 + len(sub.ifs)
        elif isinstance(sub, ast.BoolOp):
            n += len(sub.values) - 1
    return n


def test_the_measures_count_what_they_should():
    src = '''
def f(a, b):
    """doc"""
    for x in a:
        if x and b or not x:
            continue
    return [y for y in a if y] if b else None
'''
    node = ast.parse(src).body[0]
    assert body_lines(node) == 4
    # 1 + for + if + (and, or) + comprehension with one condition + conditional expression
    assert complexity(node) == 1 + 1 + 1 + 2 + 2 + 1


def test_the_loop_fits_on_a_screen_and_branches_little():
    node = _function(train.fit)
    assert body_lines(node) <= MAX_BODY_LINES, f"fit: {body_lines(node)} lines"
    assert complexity(node) <= MAX_COMPLEXITY, f"fit: complexity {complexity(node)}"


#: What a reader of ``fit`` sees happen, each as it is written there.
LOOP_LINES = {
    "forward": "session.model(**batch).logits",
    "weighted loss": "weighted_cross_entropy(logits, labels, run.weights)",
    "backward": ".backward()",
    "schedule": "get_lr(state.step, cfg, state.total_steps, state.warmup_steps)",
    "clip": "clip_grad_norm_(trainable, cfg.max_grad_norm)",
    "optimizer step": "state.scaler.step(state.optimizer)",
    "zero grad": "state.optimizer.zero_grad(",
    "evaluation": "run_logits(run, run.val_ds)",
    "checkpoint": "session.save(state",
}


def test_the_step_is_written_out_in_fit():
    source = inspect.getsource(train.fit)
    missing = [what for what, line in LOOP_LINES.items() if line not in source]
    assert not missing, f"fit does not show: {missing}"


def test_the_stop_agreement_is_written_once():
    """Every process stops at the same step: one method says how, and the loop calls it."""
    from reclor_lab.runs import session

    assert inspect.getsource(train).count("max_int(") == 0
    assert inspect.getsource(session).count("max_int(") == 1
    assert "stop.agree(" in inspect.getsource(session.RunSession.should_stop)
    assert inspect.getsource(train.fit).count("session.should_stop()") == 2  # after each step and each epoch
