"""The run config's machinery: every field's check, the one validator that
:class:`reclor_lab.config.RunConfig` calls when it is built (its ``__post_init__``), and its
reading from JSON, its changes by name and its printed table.

A check takes a field's value and returns what is wrong with it, or None; :data:`FIELD_CHECKS`
names the check of each field whose type does not say it all. :func:`problems` applies them,
reads the choices (``Literal``) and booleans from the field types, and adds the one rule that
spans two fields, so a user sees every problem of a config at once. Nothing here imports
:mod:`reclor_lab.config` (the config imports this): each function reads the config (or its
class) it is given.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin, get_type_hints

from reclor_lab.errors import ConfigError, PlanError


# --- the constraints a field's value meets ------------------------------------------------------
# A check takes a field's value and returns what is wrong with it, or None. Choices (``Literal``)
# and booleans need none: the one validator, :func:`problems`, reads them from the type.

Check = Callable[[Any], "str | None"]


#: The largest count a field takes (a 32-bit int: torch, NumPy and the tokenizers take no more).
MAX_INT = 2**31 - 1
#: The largest seed NumPy accepts, plus one.
SEED_LIMIT = 2**32
#: LoRA's rank cannot usefully exceed a layer's width (4,096 in Llama-2-7B).
MAX_LORA_R = 4096
#: The widest field a template may pad to (``{context:>50}``): far wider only costs memory.
MAX_FIELD_WIDTH = 1000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    """``repr(v)``, cut to a readable length (a 5,000-digit number stays one line)."""
    text = repr(v) if not (_is_int(v) and v.bit_length() > 200) else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= 80 else text[:77] + "..."


def int_between(lo: int, hi: int, what: str) -> Check:
    return lambda v: None if _is_int(v) and lo <= v <= hi else f"must be {what} (at most {hi:,}), got {_short(v)}"


positive_int = int_between(1, MAX_INT, "a positive integer")
non_negative_int = int_between(0, MAX_INT, "a non-negative integer")


def batch_size_value(v: Any) -> str | None:
    return None if v == "auto" or positive_int(v) is None else f"must be a positive integer or 'auto', got {_short(v)}"


_UNITS = {"gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40, "tb": 10**12}


def parse_memory(text: str | int | float) -> int:
    """Bytes from a size such as ``24GiB``, ``80 GB``, ``16384MiB`` (binary: GiB/MiB/TiB,
    decimal: GB/MB/TB; case-insensitive); a bare number is bytes.

    >>> parse_memory("24GiB"), parse_memory("1.5 gb"), parse_memory("512MiB")
    (25769803776, 1500000000, 536870912)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or (m.group(2) and m.group(2).lower() not in _UNITS):
            raise PlanError(f"memory size {text!r} not understood; write a number and a unit, "
                            "e.g. 24GiB, 80GB or 16384MiB")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = value * _UNITS.get(unit, 1)
    if not size < float(2**63):  # 1e999GiB: infinite, or more bytes than any machine has
        raise PlanError(f"memory size {text!r} is too large; write a real size, e.g. 24GiB")
    if not size > 0:
        raise PlanError(f"memory size {text!r} must be more than zero, e.g. 24GiB")
    return int(size)


def memory_size(v: Any) -> str | None:
    try:
        parse_memory(v)
    except (PlanError, TypeError) as e:
        return str(e)
    return None


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite number in [lo, hi] (``(`` / ``)`` where open). NaN and infinities are refused:
    NaN compares False with everything, so a plain range check would let it through."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")

    def check(v: Any) -> str | None:
        try:
            finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            return f"must be a finite number, got {_short(v)}"
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            return f"must be in {left}{lo:g}, {hi:g}{right}, got {_short(v)}"
        return None

    return check


def _encodable(v: str) -> bool:
    """Text a file system and a terminal take: no lone UTF-16 surrogate (``"\\ud800"`` in JSON)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def non_empty_str(v: Any) -> str | None:
    if isinstance(v, str) and v.strip() and _encodable(v):
        return None
    return f"must be a non-empty path or id in valid UTF-8, got {_short(v)}"


def module_names(v: Any) -> str | None:
    if v is None or (isinstance(v, (list, tuple)) and v and all(isinstance(t, str) and t and _encodable(t) for t in v)):
        return None
    return f"must be None or a non-empty list of module names, got {_short(v)}"


def _spec_problem(parts: list[tuple]) -> str | None:
    """A format field's width or precision that is too large or a nested field, if any."""
    for _, name, spec, _ in parts:
        if spec and ("{" in spec or any(int(n) > MAX_FIELD_WIDTH for n in re.findall(r"\d+", spec))):
            return (f"`template` field {{{name}:{spec[:20]}}}: widths and precisions may be at most "
                    f"{MAX_FIELD_WIDTH} and may not be nested fields")
    return None


def template_problems(template: str) -> list[str]:
    """What is wrong with an input layout (unknown or missing fields), as sentences."""
    import string

    if not isinstance(template, str):
        return [f"`template` must be a string, got {_short(template)}"]
    if not _encodable(template):
        return ["`template` holds an invalid character (a lone UTF-16 surrogate)"]
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return [f"`template` is not a valid format string: {e}"]
    names = {n for _, n, _, _ in parts if n is not None}
    if spec_problem := _spec_problem(parts):
        return [spec_problem]
    allowed = {"context", "question", "a", "b", "c", "d"}
    out = []
    if names - allowed:
        out.append(f"`template` uses unknown fields {sorted(names - allowed)}; allowed: {sorted(allowed)}")
    missing = {"context", "question", "a", "b", "c", "d"} - names
    if missing:
        out.append(f"`template` must show every part of a record; missing {sorted(missing)}")
    if not out:
        try:  # a format spec or conversion that text does not take ({context:d}, {a!x})
            template.format(**{n: "x" for n in allowed})
        except (ValueError, TypeError, KeyError, IndexError) as e:
            out.append(f"`template` cannot format a record: {e}")
    return out


#: Each field's check, where its type (a choice, a boolean) does not say it all.
FIELD_CHECKS: dict[str, Check] = {
    "model_name_or_path": non_empty_str,
    "data_dir": non_empty_str,
    "template": lambda v: "; ".join(template_problems(v)) or None,
    "max_len": positive_int,
    "train_limit": optional(positive_int),
    "eval_limit": optional(positive_int),
    "lora_r": int_between(1, MAX_LORA_R, "a positive integer"),
    "lora_alpha": positive_int,
    "lora_dropout": in_range(0.0, 1.0, hi_open=True),
    "lora_targets": module_names,
    "learning_rate": in_range(0.0, 1.0, lo_open=True),
    "weight_decay": in_range(0.0, 1.0),
    "epochs": positive_int,
    "batch_size": batch_size_value,
    "base_batch_size": positive_int,
    "gpu_memory": optional(memory_size),
    "eval_batch_size": positive_int,
    "grad_accum_steps": positive_int,
    "max_grad_norm": in_range(0.0, 1e9),
    "warmup_ratio": in_range(0.0, 1.0, hi_open=True),
    "seed": int_between(0, SEED_LIMIT - 1, "a non-negative integer"),
    "output_dir": non_empty_str,
    "save_every_steps": optional(positive_int),
    "keep_last_checkpoints": positive_int,
}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def problems(cfg: Any) -> list[str]:
    """Every invalid value of a run config, one sentence each, naming the field in backticks:
    the checks of :data:`FIELD_CHECKS`, the choices and booleans the field types declare, and
    the one rule that spans two fields."""
    p: list[str] = []
    hints = _field_types(type(cfg))
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), hints[f.name]
        if get_origin(kind) is Literal and value not in get_args(kind):
            p.append(f"`{f.name}` is {value!r}; choose one of {', '.join(map(repr, get_args(kind)))}")
        elif kind is bool and not isinstance(value, bool):
            p.append(f"`{f.name}` must be true or false, got {value!r}")
        elif (check := FIELD_CHECKS.get(f.name)) and (problem := check(value)):
            p.append(problem if problem.startswith("`") else f"`{f.name}` {problem}")
    if cfg.head_init == "letters" and isinstance(cfg.template, str) and not cfg.template.endswith(" Answer:"):
        p.append("`head_init` letters reads the hidden state where the model names the answer letter, so "
                 "`template` must end with ' Answer:' (the tiny preset's does; e.g. "
                 "--set template=\"...Option D: {d} Answer:\")")
    return p


# --- a config read from JSON, changed by name, shown as a table ---------------------------------

#: A config saved before a field existed ran with the behaviour the kit had then, which is not
#: always the field's default today: loading such a config (to evaluate or resume its run) takes
#: these values. Runs saved before ``kbit_upcast`` trained with peft's upcast.
SAVED_BEFORE_FIELD: dict[str, Any] = {"kbit_upcast": "peft"}


def check_known(cls: type, names: Any, where: str = "") -> None:
    """Refuse field names the config class does not have, listing the ones it has."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"{where}unknown config fields {unknown}; known: {sorted(known)}")


def load(cls: type, path: str | Path) -> Any:
    """The config of class ``cls`` saved as JSON at ``path``: one :class:`ConfigError` naming the
    file for a file that cannot be read, is not a JSON object of known fields, or holds an
    invalid value."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON config ({e})") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise ConfigError(f"{path}: not a usable JSON config ({str(e)[:120]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a JSON config (nested too deeply to read)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields")
    check_known(cls, raw, where=f"{path}: ")
    try:
        return cls(**{**SAVED_BEFORE_FIELD, **raw})
    except ConfigError as e:  # name the file the values came from
        raise ConfigError(f"{path}: {e}") from None


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config as JSON-ready data (``lora_targets`` a list)."""
    d = dataclasses.asdict(cfg)
    if d["lora_targets"] is not None:
        d["lora_targets"] = list(d["lora_targets"])
    return d


def repo_relative(cfg: Any, root: Path) -> dict[str, str]:
    """The config's paths relative to the repository ``root`` when they live inside it, so a
    printed config reads the same in every clone (the notebooks' stored outputs depend on it)."""
    out = {}
    for name in ("model_name_or_path", "data_dir", "output_dir"):
        value = getattr(cfg, name)
        try:
            out[name] = str(Path(value).resolve().relative_to(root))
        except ValueError:
            out[name] = value
    return out


def summary(cfg: Any, names: tuple[str, ...], root: Path) -> str:
    """Some fields, one ``name  value`` line each (paths repo-relative, like :func:`describe`)."""
    shown = repo_relative(cfg, root)
    return "\n".join(f"{name:<19} {shown.get(name, getattr(cfg, name))!r}" for name in names)


def describe(cfg: Any, root: Path) -> str:
    """A readable table of every field, its value and its help text (paths repo-relative)."""
    shown = {f.name: getattr(cfg, f.name) for f in fields(cfg)} | repo_relative(cfg, root)
    rows = [(f.name, repr(shown[f.name]), f.metadata.get("help", "")) for f in fields(cfg)]
    w0 = max(len(r[0]) for r in rows)
    w1 = min(max(len(r[1]) for r in rows), 40)
    lines = [f"RunConfig (preset {cfg.preset!r})"]
    for name, value, help_ in rows:
        if len(value) > w1:
            value = value[: w1 - 1] + "…"
        lines.append(f"  {name:<{w0}}  {value:<{w1}}  # {help_}")
    return "\n".join(lines)
