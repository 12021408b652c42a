"""The training loop stays readable: ``train_one_epoch`` (the loop notebook 04 prints next to
``fit``) has a body of at most 15 lines and a cyclomatic complexity of at most 10, read from
the real source."""

from __future__ import annotations

import ast
import inspect

from reclor_lab import train

MAX_BODY_LINES = 15
MAX_COMPLEXITY = 10


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


def test_one_epoch_fits_on_a_screen_and_branches_little():
    node = _function(train.train_one_epoch)
    assert body_lines(node) <= MAX_BODY_LINES, f"train_one_epoch: {body_lines(node)} lines"
    assert complexity(node) <= MAX_COMPLEXITY, f"train_one_epoch: complexity {complexity(node)}"


def test_the_stop_agreement_is_written_once():
    """Every process stops at the same step: one method says how, and the loop calls it."""
    source = inspect.getsource(train)
    assert source.count("max_int(") == 1
    assert "stop.agree(" in inspect.getsource(train.train_one_epoch)
    assert "stop.agree(" in inspect.getsource(train.fit)
