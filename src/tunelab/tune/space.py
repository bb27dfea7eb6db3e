"""The search space: `tune.space` (config key -> SearchParam) sampled by an Optuna trial into a trial's config.

Keys are sampled in the order the space lists them, so a key's `when:` can look at keys sampled before it (or at
the value fixed in the config). A conditional key whose condition does not hold is not sampled at all: it keeps
the config's value and does not appear in the trial's parameters (TPE then models it only where it applies).
The grid sampler enumerates ints (by step), categoricals, and floats given as `values:` or a step.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from tunelab.config import RunConfig, SearchParam


def get_key(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def condition_holds(param: SearchParam, raw: dict[str, Any]) -> bool:
    """Whether every `when:` key has (one of) the wanted value(s) in `raw` (the trial's config so far)."""
    for key, wanted in (param.when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if get_key(raw, key) not in allowed:
            return False
    return True


def suggest(trial: Any, key: str, param: SearchParam) -> Any:
    """One value of `param` from an Optuna trial (the parameter is named by its config key)."""
    if param.type == "categorical":
        assert param.choices is not None
        return trial.suggest_categorical(key, param.choices)
    assert param.low is not None and param.high is not None
    if param.type == "int":
        step = int(param.step or 1)
        return trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
    if param.values:  # a float given as grid points: every sampler draws from them
        return trial.suggest_categorical(key, param.values)
    return trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)


def sample(trial: Any, space: dict[str, SearchParam], base: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters (config key -> value), sampled in order into a copy of the raw config `base`."""
    raw = _copy(base)
    params: dict[str, Any] = {}
    for key, param in space.items():
        if condition_holds(param, raw):
            params[key] = suggest(trial, key, param)
            set_key(raw, key, params[key])
    return params


def apply(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    raw = _copy(base)
    for key, value in params.items():
        set_key(raw, key, value)
    return raw


def grid(space: dict[str, SearchParam]) -> dict[str, list[Any]]:
    """Optuna GridSampler's search space: every key's values."""
    out: dict[str, list[Any]] = {}
    for key, p in space.items():
        if p.type == "categorical":
            out[key] = list(p.choices or [])
        elif p.values:
            out[key] = list(p.values)
        else:
            assert p.low is not None and p.high is not None
            step = p.step or 1
            n = int(math.floor((p.high - p.low) / step + 1e-9)) + 1
            vals = [p.low + i * step for i in range(n)]
            out[key] = [int(v) for v in vals] if p.type == "int" else [round(v, 12) for v in vals]
    return out


def grid_size(space: dict[str, SearchParam]) -> int:
    return math.prod(len(v) for v in grid(space).values())


def base_raw(cfg: RunConfig) -> dict[str, Any]:
    """The config as a plain mapping, without its tune section: what every trial starts from."""
    return cfg.model_dump(mode="json", exclude={"tune"})


def _copy(raw: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(raw)
