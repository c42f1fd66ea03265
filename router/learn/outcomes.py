"""Outcome files -> a training set for the router's own plans, priced by the router config.

An outcome file is JSON lines, the format `thinkroute route-eval` reads and `thinkroute collect`
writes: per query its text (`question`, `prompt`, `query` or `text`), optionally its task (`task`),
and per plan (a key of `policy.candidates` in the router config) an object with `is_correct` and,
optionally, `tokens` ({model: generated tokens}), `prompt_tokens`, `solution`/`answer` (counted with
the SmolLM2 tokenizer when `tokens` is absent).

Bandit rows (`partial` files: the decision log as `thinkroute feedback export` writes it, read by
`thinkroute train --from-log`): a row may hold a subset of the plans, at the top level or under `plans`
(`{"question": ..., "task": ..., "plans": {"<plan>": {"is_correct": ..., "cost": ...}}}`). A plan missing
from a row is NaN in `correct`, `out_tokens` and `cost` (not judged: the plan was not run), and each plan's
heads are fitted only on the rows where it was judged. Rows with the same text merge (a plan already present
is kept, the later one counted as a duplicate). A judged plan without `tokens` or an answer text gets its
price-weighted output tokens from its logged `cost` at the config's prices, less the prompt (clipped at 0).

Costs come from the router config only (`policy.prices`, USD per million tokens per model): a plan's
cost is the sum over its models of price x (prompt tokens + that model's generated tokens). For the
policy this is one `SystemPrice` per plan: price_in = the sum of its models' prices, price_out = the
highest, and the "output tokens" the probe learns are the price-weighted sum of its models' tokens
(so predicted cost = realised cost for the same tokens). Prompt tokens for predictions are the live
planner's estimate (characters / 4), as at serving time.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from router.learn.textfeat import prompt_tokens_estimate
from router.policy.costs import SystemPrice
from router.policy.evaluate import Outcomes

TEXT_FIELDS = ("question", "prompt", "query", "text")


class OutcomeError(ValueError):
    """An outcome file that cannot train this config's policy (the message names the file and the fix)."""


@dataclass
class TrainingSet:
    data: Outcomes  # texts, task groups, correct [n, plans] (NaN: not judged), out_tokens (price-weighted), prompt estimate, cost
    plans: list[str]
    prices: dict[str, SystemPrice]
    plan_models: dict[str, list[str]]
    files: list[dict]  # {"path", "sha256", "rows", "partial"}
    duplicates: int

    @property
    def judged(self) -> np.ndarray:
        """[n, plans] True where the plan has an outcome for the row (all True without bandit rows)."""
        return ~np.isnan(self.data.correct)

    @property
    def complete(self) -> np.ndarray:
        """Indices of the rows with an outcome for every plan (route-eval's metrics need those)."""
        return np.flatnonzero(self.judged.all(1))


def plan_models(config) -> dict[str, list[str]]:
    """Models each candidate plan calls (direct: its model; pair strategies: their roles' models)."""
    from router.strategies import get_strategy

    out = {}
    for name, cand in config.policy.candidates.items():
        cls = get_strategy(cand.strategy)
        if cls.roles == ("model",):
            out[name] = [cand.model or config.router.default_model]
        else:
            out[name] = list(dict.fromkeys(config.router.roles[r] for r in cls.roles))
    return out


def model_price(config, model: str) -> tuple[float, float]:
    """(USD per million prompt tokens, per million generated tokens) of a model from `policy.prices`:
    a number (both) or an object/dict with price_in and price_out."""
    p = config.policy.prices.get(model, 0.0)
    if isinstance(p, (int, float)):
        return float(p), float(p)
    get = p.get if isinstance(p, dict) else (lambda k, d=None: getattr(p, k, d))
    return float(get("price_in", 0.0)), float(get("price_out", get("price_in", 0.0)))


def plan_prices(config) -> tuple[dict[str, SystemPrice], dict[str, list[str]]]:
    models = plan_models(config)
    prices = {}
    for plan, ms in models.items():
        pin = sum(model_price(config, m)[0] for m in ms)
        pout = max(model_price(config, m)[1] for m in ms)
        prices[plan] = SystemPrice(price_in=pin, price_out=pout)
    return prices, models


def _text_field(row: dict, path: str, field: str | None) -> str:
    if field:
        if field not in row:
            raise OutcomeError(f"{path}: rows have no text field {field!r} (fields: {sorted(row)})")
        return field
    for f in TEXT_FIELDS:
        if isinstance(row.get(f), str):
            return f
    raise OutcomeError(f"{path}: no text field in the rows (looked for {list(TEXT_FIELDS)}; fields: {sorted(row)}); pass --text-field")


def _plans_in(row: dict) -> list[str]:
    return [k for k, v in row.items() if isinstance(v, dict) and "is_correct" in v]


def _flatten(row: dict) -> dict:
    """A decision-log row's `plans: {plan: outcome}` moved to the top level (the collect / route-eval shape)."""
    nested = row.get("plans")
    if not isinstance(nested, dict):
        return row
    out = {k: v for k, v in row.items() if k != "plans"}
    for plan, rec in nested.items():
        if isinstance(rec, dict) and "is_correct" in rec and plan not in out:
            out[plan] = rec
    return out


def read_rows(paths: list[str], candidates: list[str], text_field: str | None = None, limit: int | None = None,
              partial: set[str] | frozenset[str] = frozenset()) -> tuple[list[dict], list[str], list[dict], int]:
    """Rows of every file, their text field, file records, duplicates. Rows of one text merge: the first outcome of
    each plan wins (a row adding no plan is a duplicate). Raises OutcomeError for a file whose plans are not the
    config's candidates, or, unless the file is in `partial` (bandit rows), a row lacking some of them."""
    rows, fields, files, dup = [], [], [], 0
    by_text: dict[str, dict] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise OutcomeError(f"outcome file {path} not found")
        raw = p.read_bytes()
        n = 0
        for i, line in enumerate(raw.decode("utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                row = _flatten(json.loads(line))
            except json.JSONDecodeError as e:
                raise OutcomeError(f"{path}:{i + 1}: not JSON ({e})") from None
            except AttributeError:
                raise OutcomeError(f"{path}:{i + 1}: not a JSON object") from None
            plans = _plans_in(row)
            extra = sorted(set(plans) - set(candidates))
            if extra:
                raise OutcomeError(f"{path}:{i + 1}: plans {extra} are not in the config's policy.candidates {candidates}; "
                                   "train with the config whose candidates produced this file, or add them to it")
            missing = sorted(set(candidates) - set(plans))
            if missing and str(path) not in partial:
                raise OutcomeError(f"{path}:{i + 1}: no outcome for candidates {missing} (the file has {sorted(plans)}); "
                                   "collect every candidate plan, or train with a config listing only these plans")
            if not plans:
                raise OutcomeError(f"{path}:{i + 1}: no plan outcome in the row (an object with `is_correct` per plan)")
            f = _text_field(row, path, text_field)
            first = by_text.get(row[f])
            if first is not None:
                new = [p for p in plans if p not in first]
                if not new:
                    dup += 1
                    continue
                for p in new:
                    first[p] = row[p]
                n += 1
                continue
            by_text[row[f]] = row
            rows.append(row)
            fields.append(f)
            n += 1
        files.append({"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "rows": n,
                      "partial": str(path) in partial})
    if not rows:
        raise OutcomeError(f"no outcome rows in {paths}")
    if limit and limit < len(rows):
        keep = sorted(np.random.default_rng(0).choice(len(rows), limit, replace=False))
        rows, fields = [rows[i] for i in keep], [fields[i] for i in keep]
    return rows, fields, files, dup


def load_training_set(paths: list[str], config, text_field: str | None = None, task_field: str | None = "task",
                      limit: int | None = None, count_tokens: Callable[[list[str]], np.ndarray] | None = None,
                      partial: list[str] | tuple[str, ...] = ()) -> TrainingSet:
    """Read outcome files against `config` (its policy candidates and prices); see the module docstring. Files in
    `partial` hold bandit rows (a subset of the plans per row); every plan must be judged on at least one row."""
    if config.policy is None:
        raise OutcomeError("the router config has no `policy:` section: nothing to train (add policy.candidates and prices)")
    prices, models = plan_prices(config)
    plans = list(config.policy.candidates)
    partial_set = {str(p) for p in partial}
    rows, fields, files, dup = read_rows(list(paths) + [p for p in partial if p not in paths], plans, text_field, limit,
                                         partial_set)
    texts = [r[f] for r, f in zip(rows, fields)]
    never = [p for p in plans if not any(p in r for r in rows)]
    if never:
        raise OutcomeError(f"no outcome for plans {never} in any row: a plan never judged cannot be learned (bandit "
                           "rows hold only the plan that answered); add an outcome file with every plan (thinkroute "
                           "collect) to --outcomes, or train a config without those plans")

    def counter():
        nonlocal count_tokens
        if count_tokens is None:
            from router.policy.evaluate import smollm2_token_counter

            count_tokens = smollm2_token_counter()
        return count_tokens

    n, S = len(rows), len(plans)
    judged = np.array([[p in r for p in plans] for r in rows])
    correct = np.array([[float(bool(r[p]["is_correct"])) if p in r else np.nan for p in plans] for r in rows])
    prompt = np.array([float(next((r[p].get("prompt_tokens") for p in plans if p in r), 0) or 0) for r in rows])
    if (prompt <= 0).any():
        todo = np.flatnonzero(prompt <= 0)
        prompt[todo] = counter()([texts[i] for i in todo])
    out_eff = np.full((n, S), np.nan)
    cost = np.full((n, S), np.nan)
    for j, plan in enumerate(plans):
        ms = models[plan]
        pin = np.array([model_price(config, m)[0] for m in ms])
        pout = np.array([model_price(config, m)[1] for m in ms])
        price_out = prices[plan].price_out
        tok = np.full((n, len(ms)), np.nan)
        from_cost = []
        for i, r in enumerate(rows):
            if not judged[i, j]:
                continue
            t = r[plan].get("tokens")
            if isinstance(t, dict):
                tok[i] = [float(t.get(m, 0.0)) for m in ms]
            elif (not (r[plan].get("solution") or r[plan].get("answer")) and pout[-1] > 0
                  and isinstance(r[plan].get("cost"), (int, float))):
                from_cost.append(i)
        for i in from_cost:  # a logged decision: its cost at these prices, less the prompt, is the output tokens' part
            tok[i] = 0.0
            tok[i, -1] = max(0.0, float(rows[i][plan]["cost"]) * 1e6 - prompt[i] * pin.sum()) / pout[-1]
        todo = np.flatnonzero(judged[:, j] & np.isnan(tok[:, 0]))
        if len(todo):  # no per-model tokens: count the answer text, all on the plan's last model
            sols = [str(rows[i][plan].get("solution") or rows[i][plan].get("answer") or "") for i in todo]
            tok[todo] = 0.0
            tok[todo, -1] = counter()(sols)
        out_eff[:, j] = (tok @ pout) / price_out if price_out > 0 else tok.sum(1)
        cost[:, j] = (prompt * pin.sum() + tok @ pout) / 1e6
    groups = None
    if task_field and any(task_field in r for r in rows):
        groups = np.array([str(r.get(task_field, "")) for r in rows], dtype=object)
    est = np.array([prompt_tokens_estimate(t) for t in texts], np.float64)
    data = Outcomes(texts, groups, plans, correct, out_eff, est, cost)
    return TrainingSet(data, plans, prices, models, files, dup)
