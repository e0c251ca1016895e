"""The study's statistical models, declared in the config and reported as tidy tables.

Every model is a dict (one entry of ``config["stats"]["models"]``; the study's models are in
``config/config.yaml``).  :func:`run_model` validates the spec
against the data, builds the analysis frame (merge demographics, filter, derive change scores),
fits the model and returns one tidy row per reported quantity; :func:`run_all` does this for the
whole list, :func:`write_tables` writes one TSV per model plus ``all_models.tsv`` and
:func:`write_summary_md` writes a results-section style ``summary.md`` from the numbers.

Kinds
-----
``welch_t``
    Two-group comparison of ``outcome`` by ``by`` with Welch's unequal-variance t-test
    (``scipy.stats.ttest_ind(equal_var=False)``) and the Welch-Satterthwaite df
    ``(s1²/n1 + s2²/n2)² / ((s1²/n1)²/(n1-1) + (s2²/n2)²/(n2-1))`` (Welch 1947).  Effect size:
    Hedges' g, the pooled-SD standardised difference times ``J = 1 - 3/(4(n1+n2) - 9)``, with a
    normal-approximation CI, ``Var(d) = (n1+n2)/(n1 n2) + d²/(2(n1+n2))``, ``Var(g) = J² Var(d)``
    (Hedges & Olkin 1985; Borenstein et al. 2009, *Introduction to Meta-Analysis*, eqs 4.18-4.24).
``ols``
    ``statsmodels`` OLS on a patsy formula; coefficient t-tests, an ANOVA table
    (``anova_lm``, Type II or III) and named linear contrasts (``result.t_test(L)``).
``mixedlm``
    ``statsmodels`` MixedLM with a random intercept per ``groups`` (REML).  statsmodels reports
    Wald z-tests; with ~26-30 participants these are anti-conservative, so by default
    (``inference: satterthwaite``) the same estimate and SE are referred to a t distribution with
    Satterthwaite (1946) degrees of freedom, computed as in lmerTest (Kuznetsova et al. 2017,
    J Stat Softw 82(13)) from the REML expected information of the variance parameters
    ``I_ij = tr(P V_i P V_j) / 2`` (Harville 1977; lmerTest differentiates the observed deviance
    numerically, which can differ slightly in unbalanced data).  In a balanced paired design
    with a positive random-intercept variance this gives exactly the paired-t df and SE (n - 1,
    or n1 + n2 - 2 with the pooled variance of the differences for a two-group split-plot).
    ``inference: z`` reports statsmodels' z-tests unchanged.  No Kenward-Roger SE inflation.
    ``within`` lists the within-participant factors: each participant must have exactly one row
    per within cell (``on_incomplete``: error, the default, drop or keep).
``correlation``
    Pearson r with the Fisher-z CI (``atanh(r) ± z_.975 / sqrt(n - 3)``) and Spearman's rho with
    the Fieller, Hartley & Pearson (1957) SE ``sqrt(1.06 / (n - 3))`` on the z scale; p-values from
    ``scipy.stats.pearsonr`` / ``spearmanr``.  ``x`` and ``y`` may come from different tables
    (e.g. a Glu change score and a craving change score) and are merged on ``merge_on``.

``welch_t``, ``ols`` and same-table ``correlation`` models assume independent rows: by default
(``one_row_per: participant_id``) a participant contributing two rows (e.g. both CUD sessions) is
an error.

Coding of factors
-----------------
Factor columns become ordered ``pandas.Categorical`` with the levels of :data:`DEFAULT_LEVELS`
(overridden per model with ``levels``); the first level present in the analysed data is the
reference.  Coefficients use patsy's default *treatment* (dummy) coding, so ``group[T.CUD]`` is
CUD - HC (reference HC), ``film[T.cocaine]`` is cocaine - neutral (reference neutral),
``drug[T.nac]`` is NAC - placebo (reference placebo), ``time[T.post]`` post - pre,
``period[T.2]`` period 2 - period 1 and ``sex[T.M]`` M - F.  In models with interactions a
treatment-coded "main effect" is a simple effect at the reference level of the other factor:
report the named contrasts instead.  The Type III ANOVA is computed on a refit with *sum*
(deviation) coding of every factor and centred numeric covariates, the coding under which Type III
main-effect tests are meaningful (as SPSS GLM or ``car::Anova(type = 3)`` with ``contr.sum``);
Type II tests do not depend on the coding.

Contrasts
---------
A contrast is either ``weights`` (coefficient name -> weight) or a cell difference ``diff``
(``{factor: [level_a, level_b]}``, level_a - level_b; with several factors the product, i.e. a
difference of differences = interaction contrast), evaluated at ``at`` (``{column: value}``).
Factors of the model not named in ``diff``/``at`` are averaged with equal weights over their levels
and numeric covariates are held at their mean in the analysed data (the estimated-marginal-means
convention of emmeans).  Estimates are in the outcome's units.

Effect sizes
------------
``hedges_g`` (Welch), ``partial_eta2`` (ANOVA terms: SS/(SS + SS_resid); 1-df coefficients and
contrasts in OLS: t²/(t² + df)), ``standardized_beta`` (numeric covariates: b·SD_x/SD_y),
``cohens_d`` in mixed models (estimate / sqrt(random-intercept variance + residual variance), the
total-SD standardisation of Westfall, Kenny & Judd 2014, J Exp Psychol Gen 143:2020), ``r`` and
``rho`` (correlations).

Result rows
-----------
:data:`COLUMNS`.  ``section`` is one of ``descriptive`` (cell mean, its SE/t-CI, ``sd``), ``test``
(Welch test, correlation), ``coefficient``, ``anova``, ``contrast``, ``variance`` (mixed model
variance components and ICC), or ``skipped`` (see below).  ``df2`` is the denominator df of
F-tests.  Rows are sorted by section, then term.

Models the data cannot estimate
-------------------------------
A valid spec may still be beyond the data present (a pilot with one participant per group, a
study without a NAC arm, every scan of a cell excluded): too few observations, participants,
levels or complete pairs, a factor left with one level, a singular design, no complete rows,
a fit that fails with every optimizer.  These raise :class:`InestimableError`;
:func:`run_all` then writes the model's table as one row with section ``skipped`` and the
reason in ``note`` (``on_inestimable: skip``, the default) and goes on, or stops
(``on_inestimable: error``).  Spec errors a user must fix (unknown key or column, a formula
that does not parse, a filter testing a column for a value it never takes that is not a
declared level, a contrast naming an unknown coefficient) stop the run either way.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import patsy
import statsmodels.formula.api as smf
import yaml
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm

from mrsflow.errors import InputError

__all__ = [
    "COLUMNS",
    "DEFAULT_LEVELS",
    "KINDS",
    "InestimableError",
    "ModelSpecError",
    "load_stats_config",
    "read_tables",
    "run_all",
    "run_model",
    "run_stats",
    "skip_reason",
    "skipped_table",
    "validate_spec",
    "write_summary_md",
    "write_tables",
]

KINDS = ("welch_t", "ols", "mixedlm", "correlation")
TABLES = ("metabolites", "craving")

#: Factor levels, reference (first present in the analysed data) first.
DEFAULT_LEVELS: dict[str, list[Any]] = {
    "group": ["HC", "CUD"],
    "film": ["neutral", "cocaine"],
    "drug": ["placebo", "nac", "none"],
    "time": ["pre", "post"],
    "period": [1, 2],
    "sex": ["F", "M"],
}

COLUMNS = [
    "model",
    "kind",
    "outcome",
    "section",
    "term",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "statistic",
    "stat_type",
    "df",
    "df2",
    "p",
    "effect_size",
    "effect_size_type",
    "es_ci_low",
    "es_ci_high",
    "sd",
    "n_obs",
    "n_participants",
    "note",
]
_SECTIONS = ("descriptive", "test", "coefficient", "anova", "contrast", "variance", "skipped")
SKIPPED = "skipped"
ON_INESTIMABLE = ("skip", "error")
_FLOAT_FORMAT = "%.6g"
_Z975 = float(sps.norm.ppf(0.975))

_COMMON_KEYS = {"name", "kind", "table", "filter", "derive", "levels", "label", "description"}
_KIND_KEYS = {
    "welch_t": {"outcome", "by", "one_row_per"},
    "ols": {"formula", "anova", "center", "contrasts", "describe_by", "one_row_per"},
    "mixedlm": {
        "formula",
        "groups",
        "within",
        "on_incomplete",
        "contrasts",
        "inference",
        "optimizers",
        "center",
        "describe_by",
    },
    "correlation": {"x", "y", "method", "merge_on", "one_row_per"},
}
_REQUIRED = {
    "welch_t": ("table", "outcome", "by"),
    "ols": ("table", "formula"),
    "mixedlm": ("table", "formula"),
    "correlation": ("x", "y"),
}
_DERIVE_KEYS = {"name", "over", "levels", "value", "keys", "on_incomplete", "op"}
_SOURCE_KEYS = {"table", "filter", "derive", "column"}
_CONTRAST_KEYS = {"name", "label", "diff", "at", "weights"}
_OPTIMIZERS = ["lbfgs", "bfgs", "cg", "powell", "nm"]
# names inside patsy formula code that are functions/contrast objects, not columns
_FORMULA_BUILTINS = {
    "C", "I", "Q", "np", "center", "standardize", "scale", "Treatment", "Sum", "Diff", "Poly",
    "Helmert", "log", "exp", "sqrt", "abs", "True", "False", "None",
}  # fmt: skip
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ModelSpecError(InputError):
    """A model spec is invalid or does not fit the data (a ``ValueError``; names the model)."""


class InestimableError(ModelSpecError):
    """A valid spec that the data present cannot estimate: too few observations, participants,
    levels or pairs, a factor with one level, a singular design, no complete rows, a failed
    fit.  :func:`run_all` reports such a model as skipped (``on_inestimable: skip``) and goes
    on; ``reason`` is the message without the model name."""

    def __init__(self, model: str, reason: str):
        super().__init__(f"model '{model}': {reason}")
        self.model = model
        self.reason = reason


def _err(model: str, msg: str) -> ModelSpecError:
    return ModelSpecError(f"model '{model}': {msg}")


def _skip(model: str, msg: str) -> InestimableError:
    return InestimableError(model, msg)


def _declared(value: Any, levels: Sequence | None) -> bool:
    """Whether ``value`` is one of the declared ``levels`` of its column (compared as text)."""
    return levels is not None and str(value) in {str(v) for v in levels}


def _absent_values(
    expr: str, df: pd.DataFrame, levels: Mapping[str, Sequence]
) -> list[tuple[str, Any]]:
    """(column, value) pairs of a filter's ``column == value`` / ``column in [...]`` tests whose
    value the column never takes in ``df`` and that is not a declared level of the column:
    likely typos (a declared level absent from the data is a small study, not a typo)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return []
    out: list[tuple[str, Any]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or len(node.ops) != 1:
            continue
        left, op, right = node.left, node.ops[0], node.comparators[0]
        if isinstance(left, ast.Constant) and isinstance(right, ast.Name):
            left, right = right, left
        if not isinstance(left, ast.Name) or left.id not in df.columns:
            continue
        if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
            values = [right.value]
        elif isinstance(op, ast.In) and isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            values = [e.value for e in right.elts if isinstance(e, ast.Constant)]
        else:
            continue
        present = {str(v) for v in df[left.id].dropna().unique()}
        for v in values:
            if str(v) not in present and not _declared(v, levels.get(left.id)):
                out.append((left.id, v))
    return out


# --------------------------------------------------------------------------------------------
# spec validation
# --------------------------------------------------------------------------------------------


def _as_str_list(model: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _err(model, f"'{key}' must be a column name or a list of column names, got {value!r}")


def _check_derive(model: str, derive: Any) -> list[dict]:
    if derive is None:
        return []
    if isinstance(derive, Mapping):
        derive = [derive]
    if not isinstance(derive, Sequence) or isinstance(derive, str):
        raise _err(model, "'derive' must be a mapping or a list of mappings")
    steps = []
    for i, step in enumerate(derive):
        if not isinstance(step, Mapping):
            raise _err(model, f"derive step {i} must be a mapping")
        unknown = sorted(set(step) - _DERIVE_KEYS)
        if unknown:
            raise _err(model, f"derive step {i}: unknown key(s) {unknown}")
        for key in ("name", "over", "levels", "value", "keys"):
            if key not in step:
                raise _err(model, f"derive step {i}: missing key '{key}'")
        lv = step["levels"]
        if not isinstance(lv, Sequence) or isinstance(lv, str) or len(lv) != 2:
            raise _err(model, f"derive step {i}: 'levels' must be [level_a, level_b] (a - b)")
        if lv[0] == lv[1]:
            raise _err(model, f"derive step {i}: the two levels must differ")
        if step.get("op", "difference") != "difference":
            raise _err(model, f"derive step {i}: only op 'difference' is supported")
        on_inc = step.get("on_incomplete", "error")
        if on_inc not in ("error", "drop"):
            raise _err(model, f"derive step {i}: on_incomplete must be 'error' or 'drop'")
        steps.append(
            {
                "name": str(step["name"]),
                "over": str(step["over"]),
                "levels": list(lv),
                "value": str(step["value"]),
                "keys": _as_str_list(model, "derive.keys", step["keys"]),
                "on_incomplete": on_inc,
            }
        )
    return steps


def _check_contrasts(model: str, contrasts: Any) -> list[dict]:
    if contrasts is None:
        return []
    if isinstance(contrasts, Mapping):  # {name: body}
        contrasts = [{"name": k, **dict(v)} for k, v in contrasts.items()]
    out = []
    seen: set[str] = set()
    for i, c in enumerate(contrasts):
        if not isinstance(c, Mapping) or "name" not in c:
            raise _err(model, f"contrast {i} must be a mapping with a 'name'")
        name = str(c["name"])
        unknown = sorted(set(c) - _CONTRAST_KEYS)
        if unknown:
            raise _err(model, f"contrast '{name}': unknown key(s) {unknown}")
        if name in seen:
            raise _err(model, f"duplicate contrast name '{name}'")
        seen.add(name)
        has_w, has_d = "weights" in c, "diff" in c
        if has_w == has_d:
            raise _err(model, f"contrast '{name}': give exactly one of 'weights' or 'diff'")
        if has_w and (not isinstance(c["weights"], Mapping) or not c["weights"]):
            raise _err(model, f"contrast '{name}': 'weights' must map coefficient names to numbers")
        if has_d:
            d = c["diff"]
            if not isinstance(d, Mapping) or not d:
                raise _err(model, f"contrast '{name}': 'diff' must map factor -> [a, b]")
            for f, lv in d.items():
                if not isinstance(lv, Sequence) or isinstance(lv, str) or len(lv) != 2:
                    raise _err(model, f"contrast '{name}': diff[{f!r}] must be [a, b] (a - b)")
        at = c.get("at", {}) or {}
        if not isinstance(at, Mapping):
            raise _err(model, f"contrast '{name}': 'at' must be a mapping column -> value")
        if has_d and set(at) & set(c["diff"]):
            raise _err(model, f"contrast '{name}': a column is in both 'at' and 'diff'")
        out.append(
            {
                "name": name,
                "label": str(c.get("label", name)),
                "diff": {str(k): list(v) for k, v in (c.get("diff") or {}).items()},
                "at": dict(at),
                "weights": {str(k): float(v) for k, v in (c.get("weights") or {}).items()},
            }
        )
    return out


def _check_source(model: str, key: str, value: Any, default_table: str | None) -> dict:
    """x/y of a correlation: a column of the model's table, or its own table/filter/derive."""
    if isinstance(value, str):
        if default_table is None:
            raise _err(model, f"'{key}' is a column name but the model has no 'table'")
        return {"table": default_table, "column": value, "own": False}
    if not isinstance(value, Mapping):
        raise _err(model, f"'{key}' must be a column name or a mapping")
    unknown = sorted(set(value) - _SOURCE_KEYS)
    if unknown:
        raise _err(model, f"'{key}': unknown key(s) {unknown}")
    if "column" not in value:
        raise _err(model, f"'{key}': missing 'column'")
    table = value.get("table", default_table)
    if table not in TABLES:
        raise _err(model, f"'{key}': table must be one of {list(TABLES)}, got {table!r}")
    return {
        "table": table,
        "filter": value.get("filter"),
        "derive": _check_derive(model, value.get("derive")),
        "column": str(value["column"]),
        "own": True,
    }


def _normalize_spec(spec: Mapping, levels: Mapping | None = None) -> dict:
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"model spec must be a mapping, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ModelSpecError(f"model spec without a 'name': {dict(spec)!r}")
    if not _NAME_RE.match(name) or name == "all_models":
        raise _err(name, "name must match [A-Za-z0-9_.-]+ and not be 'all_models'")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise _err(name, f"unknown kind {kind!r} (expected one of {list(KINDS)})")
    unknown = sorted(map(str, set(spec) - _COMMON_KEYS - _KIND_KEYS[kind]))
    if unknown:
        hint = ""
        if any(isinstance(k, bool) for k in spec):
            hint = " (YAML 1.1 reads an unquoted on/off/yes/no key as a boolean)"
        raise _err(name, f"unknown key(s) {unknown} for kind '{kind}'{hint}")
    for key in _REQUIRED[kind]:
        if spec.get(key) in (None, ""):
            raise _err(name, f"missing required key '{key}' for kind '{kind}'")
    table = spec.get("table")
    if table is not None and table not in TABLES:
        raise _err(name, f"table must be one of {list(TABLES)}, got {table!r}")
    filt = spec.get("filter")
    if filt is not None and not isinstance(filt, str):
        raise _err(name, "'filter' must be a pandas query string")
    lv = dict(DEFAULT_LEVELS)
    for source in (levels, spec.get("levels")):
        if source is None:
            continue
        bad = not isinstance(source, Mapping) or any(
            isinstance(v, str) or not isinstance(v, Sequence) for v in source.values()
        )
        if bad:
            raise _err(name, f"'levels' must map column -> list of levels, got {source!r}")
        lv.update(source)
    out: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "table": table,
        "filter": filt,
        "derive": _check_derive(name, spec.get("derive")),
        "levels": {k: list(v) for k, v in lv.items()},
        "label": str(spec.get("label", name)),
        "description": spec.get("description"),
    }
    if kind in ("ols", "mixedlm"):
        formula = spec["formula"]
        if not isinstance(formula, str) or "~" not in formula:
            raise _err(name, f"'formula' must be 'outcome ~ terms', got {formula!r}")
        try:
            desc = patsy.ModelDesc.from_formula(formula)
        except Exception as exc:
            raise _err(name, f"cannot parse formula {formula!r}: {exc}") from exc
        lhs = [f.code for t in desc.lhs_termlist for f in t.factors]
        if len(lhs) != 1 or not lhs[0].isidentifier():
            raise _err(name, f"formula {formula!r}: the left-hand side must be one column name")
        out["formula"] = formula
        out["outcome"] = lhs[0]
        out["formula_columns"] = _formula_columns(formula)
        out["contrasts"] = _check_contrasts(name, spec.get("contrasts"))
        out["center"] = _as_str_list(name, "center", spec.get("center") or [])
        describe_by = spec.get("describe_by")
        out["describe_by"] = None if describe_by is None else _as_str_list(
            name, "describe_by", describe_by
        )
    if kind == "ols":
        anova = spec.get("anova", 3)
        types = {None: None, 2: 2, 3: 3, "2": 2, "3": 3, "II": 2, "III": 3}
        if isinstance(anova, bool) or anova not in types:
            raise _err(name, f"'anova' must be 2, 3 or null, got {anova!r}")
        out["anova"] = types[anova]
    if kind == "mixedlm":
        out["groups"] = str(spec.get("groups", "participant_id"))
        out["within"] = _as_str_list(name, "within", spec.get("within") or [])
        out["on_incomplete"] = spec.get("on_incomplete", "error")
        if out["on_incomplete"] not in ("error", "drop", "keep"):
            raise _err(name, "on_incomplete must be 'error', 'drop' or 'keep'")
        out["inference"] = spec.get("inference", "satterthwaite")
        if out["inference"] not in ("satterthwaite", "z"):
            raise _err(name, "inference must be 'satterthwaite' or 'z'")
        opt = spec.get("optimizers", _OPTIMIZERS)
        out["optimizers"] = _as_str_list(name, "optimizers", opt)
    if kind == "welch_t":
        out["outcome"] = str(spec["outcome"])
        out["by"] = str(spec["by"])
    if kind == "correlation":
        out["x"] = _check_source(name, "x", spec["x"], table)
        out["y"] = _check_source(name, "y", spec["y"], table)
        methods = spec.get("method", "pearson")
        methods = [methods] if isinstance(methods, str) else list(methods)
        bad = [m for m in methods if m not in ("pearson", "spearman")]
        if bad or not methods:
            raise _err(name, f"method must be 'pearson' and/or 'spearman', got {bad or methods}")
        out["method"] = methods
        out["merge_on"] = _as_str_list(name, "merge_on", spec.get("merge_on", ["participant_id"]))
        out["outcome"] = out["y"]["column"]
    if kind in ("welch_t", "ols", "correlation"):
        orp = spec.get("one_row_per", "participant_id")
        out["one_row_per"] = None if orp is None else _as_str_list(name, "one_row_per", orp)
    return out


def _formula_columns(formula: str) -> list[str]:
    """Data columns referenced by a patsy formula (bare names, C(x), np.log(x), Q('x'))."""
    desc = patsy.ModelDesc.from_formula(formula)
    names: list[str] = []
    for term in [*desc.lhs_termlist, *desc.rhs_termlist]:
        for factor in term.factors:
            for n in _code_names(factor.code):
                if n not in names:
                    names.append(n)
    return names


def _code_names(code: str) -> list[str]:
    tree = ast.parse(code, mode="eval")
    skip: set[int] = set()
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            skip.add(id(node.func))
            if isinstance(node.func, ast.Name) and node.func.id == "Q" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.append(arg.value)
        elif isinstance(node, ast.Attribute):
            skip.add(id(node.value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and id(node) not in skip
            and node.id not in _FORMULA_BUILTINS
            and node.id not in names
        ):
            names.append(node.id)
    return names


def _query_names(expr: str) -> list[str] | None:
    """Best-effort list of the column names a pandas query uses (None if not parseable)."""
    if "`" in expr or "@" in expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in funcs and node.id not in out:
            if node.id not in ("True", "False", "None"):
                out.append(node.id)
    return out


def _available_columns(
    table: str, tables: Mapping[str, pd.DataFrame | None], derive: list[dict]
) -> set[str] | None:
    df = tables.get(table)
    if df is None:
        return None
    cols = set(df.columns)
    part = tables.get("participants")
    if part is not None:
        cols |= set(part.columns)
    for step in derive:
        cols = (cols - {step["over"], step["value"]}) | {step["name"]}
    return cols


def validate_spec(
    spec: Mapping,
    metabolites: pd.DataFrame | None = None,
    craving: pd.DataFrame | None = None,
    participants: pd.DataFrame | None = None,
    *,
    levels: Mapping | None = None,
) -> dict:
    """Check a model spec (keys, kind, types) and, given the tables, that its columns exist.

    Returns the normalised spec (defaults filled in).  Raises :class:`ModelSpecError` (a
    ``ValueError``) naming the model and the problem.  Columns that a ``derive`` step would not
    carry over (not constant within its keys) can only be detected when the model is run.
    """
    s = _normalize_spec(spec, levels)
    name = s["name"]
    tables = {"metabolites": metabolites, "craving": craving, "participants": participants}

    def need(cols: Iterable[str], table: str, derive: list[dict], filt: str | None, what: str):
        raw = _available_columns(table, tables, [])
        if raw is None:
            return
        for step in derive:  # derive inputs must exist before deriving
            miss = [c for c in [step["over"], step["value"], *step["keys"]] if c not in raw]
            if miss:
                raise _err(name, f"derive '{step['name']}': column(s) {miss} not in table "
                           f"'{table}' (or participants)")
            raw = (raw - {step["over"], step["value"]}) | {step["name"]}
        if filt:
            qn = _query_names(filt) or []
            base = _available_columns(table, tables, [])
            miss = [c for c in qn if c not in base]
            if miss:
                raise _err(name, f"filter {filt!r} uses column(s) {miss} not in table '{table}' "
                           "(or participants)")
        miss = [c for c in cols if c not in raw]
        if miss:
            raise _err(name, f"{what}: column(s) {miss} not in table '{table}' (or participants"
                       + (", after derive" if derive else "") + ")")

    kind = s["kind"]
    if kind == "welch_t":
        need([s["outcome"], s["by"]], s["table"], s["derive"], s["filter"], "outcome/by")
    elif kind in ("ols", "mixedlm"):
        cols = list(s["formula_columns"])
        if kind == "mixedlm":
            cols += [s["groups"], *s["within"]]
        need(cols, s["table"], s["derive"], s["filter"], f"formula {s['formula']!r}")
        if s["center"]:
            need(s["center"], s["table"], s["derive"], None, "center")
    else:
        merged = s["x"]["own"] or s["y"]["own"]
        for key in ("x", "y"):
            src = s[key]
            cols = [src["column"], *(s["merge_on"] if merged else [])]
            if src["own"]:
                need(cols, src["table"], src["derive"], src["filter"], key)
            else:
                need(cols, s["table"], s["derive"], s["filter"], key)
    return s


# --------------------------------------------------------------------------------------------
# building the analysis frame
# --------------------------------------------------------------------------------------------


def _merge_participants(
    model: str, df: pd.DataFrame, participants: pd.DataFrame | None, table: str
) -> pd.DataFrame:
    if participants is None or participants.empty:
        return df
    if "participant_id" not in participants.columns:
        raise _err(model, "participants table has no 'participant_id' column")
    if "participant_id" not in df.columns:
        raise _err(model, f"table '{table}' has no 'participant_id' column")
    dup = participants["participant_id"][participants["participant_id"].duplicated()]
    if len(dup):
        raise _err(model, f"participants table lists {sorted(set(dup.astype(str)))} twice")
    extra = [c for c in participants.columns if c not in df.columns]
    cols = ["participant_id", *extra]
    if "group" in participants.columns and "group" in df.columns:
        cols.append("group")
    part = participants[cols]
    left_id, right_id = df["participant_id"], part["participant_id"]
    if left_id.dtype != right_id.dtype:
        df = df.assign(participant_id=left_id.astype(str))
        part = part.assign(participant_id=right_id.astype(str))
    if "group" in cols:
        part = part.rename(columns={"group": "_group_participants"})
    out = df.merge(part, on="participant_id", how="left", validate="many_to_one")
    if "_group_participants" in out.columns:
        a, b = out["group"], out["_group_participants"]
        bad = out.loc[a.notna() & b.notna() & (a.astype(str) != b.astype(str)), "participant_id"]
        if len(bad):
            raise _err(model, f"group in table '{table}' disagrees with participants.tsv for "
                       f"participant(s) {sorted(set(bad.astype(str)))}")
        out = out.drop(columns="_group_participants")
    return out


def _apply_filter(
    model: str, df: pd.DataFrame, expr: str | None, table: str, levels: Mapping | None = None
) -> pd.DataFrame:
    """Rows of ``df`` the filter keeps. None kept: a spec error if the filter tests a column
    for a value it never takes that is not a declared level (a typo), else not estimable."""
    if df.empty:
        raise _skip(model, f"table '{table}' is empty")
    if not expr:
        return df
    names = _query_names(expr)
    if names is not None:
        miss = [n for n in names if n not in df.columns]
        if miss:
            raise _err(model, f"filter {expr!r} uses column(s) {miss} not in table '{table}' "
                       "(or participants)")
    try:
        out = df.query(expr, engine="python")
    except Exception as exc:
        raise _err(model, f"filter {expr!r} failed on table '{table}': {exc}") from exc
    if out.empty:
        msg = (f"filter {expr!r} left no rows of table '{table}' ({len(df)} rows before "
               "filtering)")
        typos = _absent_values(expr, df, levels or {})
        if typos:
            raise _err(model, msg + "; " + ", ".join(
                f"{c} is never {v!r} in the table (a typo? declared levels: "
                f"{list((levels or {}).get(c, [])) or 'none'})" for c, v in typos))
        raise _skip(model, msg)
    return out


def _fmt_key(keys: Sequence[str], values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def _level_mask(series: pd.Series, level: Any) -> pd.Series:
    mask = series == level
    if not mask.any():  # YAML '1' vs data 1, or the reverse
        mask = series.astype(str) == str(level)
    return mask


def _derive(model: str, df: pd.DataFrame, step: dict, notes: list | None = None,
            levels: Mapping | None = None) -> pd.DataFrame:
    """One derive step (a paired difference); units dropped by ``on_incomplete: drop`` are
    described in ``notes`` (if given) so the model's rows can say who was left out."""
    over, (la, lb), value, keys, name = (
        step["over"], step["levels"], step["value"], step["keys"], step["name"]
    )
    what = f"derive '{name}'"
    miss = [c for c in [over, value, *keys] if c not in df.columns]
    if miss:
        raise _err(model, f"{what}: column(s) {miss} not in the data")
    ma, mb = _level_mask(df[over], la), _level_mask(df[over], lb)
    typos = [v for v, m in ((la, ma), (lb, mb))
             if not m.any() and not _declared(v, (levels or {}).get(over))]
    if typos:  # a level neither in the data nor declared: a spec error, not a small study
        raise _err(model, f"{what}: {over} is never {' or '.join(map(repr, typos))} in the "
                   f"data and not a declared level (a typo?)")
    sub = df[ma | mb].assign(_lvl=np.where(ma[ma | mb], "a", "b"))
    if sub.empty:
        raise _skip(model, f"{what}: no rows with {over} in {[la, lb]}")
    dup = sub.duplicated([*keys, "_lvl"], keep=False)
    if dup.any():
        first = sub.loc[dup, keys].iloc[0]
        raise _err(model, f"{what}: {_fmt_key(keys, tuple(first))} has several rows at one "
                   f"{over} level; add keys or refine the filter (e.g. metabolite == ...)")
    grouped = sub.groupby(keys, dropna=False, sort=True)
    levels_present = grouped["_lvl"].agg(lambda s: "".join(sorted(s)))
    incomplete = levels_present[levels_present != "ab"]
    if len(incomplete):
        if step["on_incomplete"] == "error":
            desc = []
            for key, present in incomplete.head(5).items():
                have = la if present == "a" else lb
                lack = lb if present == "a" else la
                desc.append(f"{_fmt_key(keys, key)} has only {over}={have} (no {over}={lack})")
            more = f" (and {len(incomplete) - 5} more)" if len(incomplete) > 5 else ""
            raise _err(model, f"{what} = {value}[{over}={la}] - {value}[{over}={lb}] is paired "
                       f"over {over}: " + "; ".join(desc) + more
                       + "; set on_incomplete: drop to exclude incomplete units")
        if notes is not None:
            units = []
            for key, present in incomplete.items():
                lack = lb if present == "a" else la
                units.append(f"{_fmt_key(keys, key)} (no {over}={lack})")
            notes.append(f"{what}: dropped incomplete " + ", ".join(units))
        keep_keys = levels_present.index[levels_present == "ab"]
        sub = sub.set_index(keys).loc[keep_keys].reset_index()
        if sub.empty:
            raise _skip(model, f"{what}: no unit has both {over}={la} and {over}={lb}")
    wide = sub.pivot_table(index=keys, columns="_lvl", values=value, aggfunc="first",
                           dropna=False)
    diff = (wide["a"] - wide["b"]).rename(name)
    others = [c for c in sub.columns if c not in {*keys, over, value, "_lvl", name}]
    const = sub.groupby(keys, dropna=False, sort=True)[others].nunique(dropna=False).max()
    carried = [c for c in others if const.get(c, 2) <= 1]
    base = sub[sub["_lvl"] == "a"].set_index(keys)[carried]
    out = base.join(diff).reset_index()
    return out


def _source_frame(
    model: str,
    table: str,
    filt: str | None,
    derive: list[dict],
    tables: Mapping[str, pd.DataFrame | None],
    notes: list | None = None,
    levels: Mapping | None = None,
) -> pd.DataFrame:
    df = tables.get(table)
    if df is None:
        raise _err(model, f"table '{table}' was not given")
    if not isinstance(df, pd.DataFrame):
        raise _err(model, f"table '{table}' must be a pandas DataFrame")
    df = _merge_participants(model, df, tables.get("participants"), table)
    df = _apply_filter(model, df, filt, table, levels)
    for step in derive:
        df = _derive(model, df, step, notes, levels)
    return df


def _note_dropped(out: pd.DataFrame, notes: list) -> pd.DataFrame:
    """Prefix every row's note with the units a derive step dropped (if any)."""
    if not notes:
        return out
    text = "; ".join(dict.fromkeys(notes))
    out = out.copy()
    out["note"] = [f"{text}; {n}" if n else text for n in out["note"]]
    return out


def _as_categorical(model: str, s: pd.Series, levels: Sequence | None, col: str) -> pd.Series:
    values = s.dropna().unique().tolist()
    if levels is None:
        cats = sorted(values, key=lambda v: (str(type(v)), v))
        return pd.Series(pd.Categorical(s, categories=cats), index=s.index, name=s.name)
    lv = list(levels)
    if not set(values) <= set(lv):
        by_str = {str(v): v for v in lv}
        if {str(v) for v in values} <= set(by_str):
            s = s.map(lambda v: v if pd.isna(v) else by_str[str(v)])
            values = s.dropna().unique().tolist()
        else:
            extra = sorted({str(v) for v in values} - {str(v) for v in lv})
            raise _err(model, f"column '{col}' has value(s) {extra} not among its declared "
                       f"levels {lv} (set 'levels: {{{col}: [...]}}')")
    present = [v for v in lv if v in set(values)]
    return pd.Series(pd.Categorical(s, categories=present), index=s.index, name=s.name)


def _is_factor(s: pd.Series, col: str, levels: Mapping) -> bool:
    return (
        col in levels
        or isinstance(s.dtype, pd.CategoricalDtype)
        or not pd.api.types.is_numeric_dtype(s)
        or pd.api.types.is_bool_dtype(s)
    )


def _note_missing(spec: dict, df: pd.DataFrame, cols: Sequence[str]) -> None:
    """Name, in the model's note (``spec['_notes']``), who was left out for a missing value
    of a model column (an optional sheet column such as age left empty or n/a)."""
    notes = spec.get("_notes")
    na = df[list(cols)].isna()
    if notes is None or not na.to_numpy().any() or "participant_id" not in df.columns:
        return
    parts = []
    for c in cols:
        who = sorted(df.loc[na[c], "participant_id"].astype(str).unique())
        if who:
            parts.append(f"{c} ({', '.join(who)})")
    notes.append("left out for a missing value of " + "; ".join(parts))


def _model_frame(
    spec: dict, df: pd.DataFrame, cols: Sequence[str], *, factors_only: Sequence[str] = ()
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Complete cases of ``cols``; factor columns -> ordered Categorical (reference first)."""
    name = spec["name"]
    miss = [c for c in cols if c not in df.columns]
    if miss:
        hint = ""
        if spec.get("derive"):
            hint = (" (after derive, only the keys, the derived column and columns constant "
                    "within the keys are kept)")
        raise _err(name, f"column(s) {miss} not in the data{hint}")
    frame = df.dropna(subset=list(cols))
    _note_missing(spec, df, cols)
    if frame.empty:
        raise _skip(name, f"no complete rows for columns {list(cols)} after filtering "
                    f"({len(df)} rows had missing values)")
    factors, numerics = [], []
    frame = frame.copy()
    for c in cols:
        if c in factors_only or _is_factor(frame[c], c, spec["levels"]):
            frame[c] = _as_categorical(name, frame[c], spec["levels"].get(c), c)
            factors.append(c)
        else:
            frame[c] = frame[c].astype(float)
            numerics.append(c)
    return frame, factors, numerics


def _check_one_row(spec: dict, frame: pd.DataFrame) -> None:
    keys = spec.get("one_row_per")
    if not keys or not set(keys) <= set(frame.columns):
        return
    dup = frame[frame.duplicated(keys, keep=False)]
    if len(dup):
        ids = sorted({_fmt_key(keys, tuple(r)) for r in dup[keys].itertuples(index=False)})
        raise _err(spec["name"], f"{ids[:5]} contribute more than one row, but a "
                   f"{spec['kind']} model needs independent observations (one row per "
                   f"{'/'.join(keys)}); refine the filter (e.g. the CUD session: drug == "
                   "'placebo') or set one_row_per: null")


def _n_participants(frame: pd.DataFrame) -> float:
    if "participant_id" in frame.columns:
        return float(frame["participant_id"].nunique())
    return float("nan")


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------


def _row(spec: dict, section: str, term: str, **kw: Any) -> dict:
    row = {c: np.nan for c in COLUMNS}
    row.update(
        model=spec["name"], kind=spec["kind"], outcome=spec.get("outcome", ""), section=section,
        term=term, stat_type="", effect_size_type="", note="",
    )
    row.update(kw)
    return row


def _describe(
    spec: dict, frame: pd.DataFrame, value: str, by: Sequence[str], term_name: str = "mean"
) -> list[dict]:
    rows = []
    groups = frame.groupby(list(by), observed=True, sort=True) if by else [((), frame)]
    for key, sub in groups:
        x = sub[value].to_numpy(float)
        n = len(x)
        mean = float(np.mean(x))
        sd = float(np.std(x, ddof=1)) if n > 1 else float("nan")
        se = sd / math.sqrt(n) if n > 1 else float("nan")
        tcrit = float(sps.t.ppf(0.975, n - 1)) if n > 1 else float("nan")
        label = f"{term_name}[{_fmt_key(by, key)}]" if by else f"{term_name}[{value}]"
        rows.append(
            _row(spec, "descriptive", label, estimate=mean, se=se, ci_low=mean - tcrit * se,
                 ci_high=mean + tcrit * se, df=float(n - 1), sd=sd, n_obs=float(n),
                 n_participants=_n_participants(sub), stat_type="mean")
        )
    return rows


def _finish(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=COLUMNS)
    rank = {s: i for i, s in enumerate(_SECTIONS)}
    out["_rank"] = out["section"].map(rank)
    out = out.sort_values(["_rank", "term", "effect_size_type"], kind="mergesort")
    out = out.drop(columns="_rank").reset_index(drop=True)
    for c in COLUMNS:
        if c in ("model", "kind", "outcome", "section", "term", "stat_type", "effect_size_type",
                 "note"):
            out[c] = out[c].fillna("").astype(str)
        else:
            out[c] = out[c].astype(float)
    return out


# --------------------------------------------------------------------------------------------
# Welch t-test
# --------------------------------------------------------------------------------------------


def welch_df(s1: float, n1: int, s2: float, n2: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the two SDs and sizes."""
    a, b = s1**2 / n1, s2**2 / n2
    return (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))


def hedges_g(x1: np.ndarray, x2: np.ndarray) -> tuple[float, float]:
    """Hedges' g (mean(x1) - mean(x2), pooled SD, small-sample corrected) and its SE."""
    n1, n2 = len(x1), len(x2)
    sp = math.sqrt(((n1 - 1) * np.var(x1, ddof=1) + (n2 - 1) * np.var(x2, ddof=1)) / (n1 + n2 - 2))
    d = (np.mean(x1) - np.mean(x2)) / sp
    j = 1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)
    var_d = (n1 + n2) / (n1 * n2) + d**2 / (2.0 * (n1 + n2))
    return float(j * d), float(j * math.sqrt(var_d))


def _run_welch(spec: dict, df: pd.DataFrame) -> pd.DataFrame:
    name, y, by = spec["name"], spec["outcome"], spec["by"]
    frame, _, _ = _model_frame(spec, df, [y, by], factors_only=[by])
    if not pd.api.types.is_numeric_dtype(frame[y]):
        raise _err(name, f"outcome '{y}' is not numeric")
    _check_one_row(spec, frame)
    cats = list(frame[by].cat.categories)
    if len(cats) > 2:
        raise _err(name, f"'{by}' must have exactly two levels after filtering, found {cats}")
    if len(cats) < 2:
        raise _skip(name, f"'{by}' has only the level(s) {cats} after filtering; a two-group "
                    "comparison needs two")
    ref, lvl = cats
    x1 = frame.loc[frame[by] == lvl, y].to_numpy(float)
    x0 = frame.loc[frame[by] == ref, y].to_numpy(float)
    for lab, x in ((lvl, x1), (ref, x0)):
        if len(x) < 2:
            raise _skip(name, f"{by}={lab} has {len(x)} observation(s); need at least 2")
    v1, v0 = np.var(x1, ddof=1), np.var(x0, ddof=1)
    if v1 == 0 and v0 == 0:
        raise _skip(name, f"'{y}' does not vary within either group: no standard error")
    n1, n0 = len(x1), len(x0)
    est = float(np.mean(x1) - np.mean(x0))
    se = math.sqrt(v1 / n1 + v0 / n0)
    dfw = welch_df(math.sqrt(v1), n1, math.sqrt(v0), n0)
    res = sps.ttest_ind(x1, x0, equal_var=False)
    tcrit = float(sps.t.ppf(0.975, dfw))
    g, se_g = hedges_g(x1, x0)
    rows = _describe(spec, frame, y, [by])
    rows.append(
        _row(spec, "test", f"{lvl} - {ref}", estimate=est, se=se, ci_low=est - tcrit * se,
             ci_high=est + tcrit * se, statistic=float(res.statistic), stat_type="t", df=dfw,
             p=float(res.pvalue), effect_size=g, effect_size_type="hedges_g",
             es_ci_low=g - _Z975 * se_g, es_ci_high=g + _Z975 * se_g, n_obs=float(n1 + n0),
             n_participants=_n_participants(frame), note="Welch t-test (unequal variances)")
    )
    return _finish(rows)


# --------------------------------------------------------------------------------------------
# formula models: shared helpers
# --------------------------------------------------------------------------------------------


def _formula_frame(spec: dict, df: pd.DataFrame, extra: Sequence[str] = ()):
    cols = [*spec["formula_columns"], *[c for c in extra if c not in spec["formula_columns"]]]
    frame, factors, numerics = _model_frame(spec, df, cols)
    y = spec["outcome"]
    if y in factors:
        raise _err(spec["name"], f"outcome '{y}' must be numeric")
    factors = [f for f in factors if f in spec["formula_columns"]]
    numerics = [c for c in numerics if c != y and c in spec["formula_columns"]]
    for f in factors:  # a one-level factor has no contrast: patsy drops it or ANOVA fails
        present = list(frame[f].cat.categories)
        if len(present) < 2 and f not in spec.get("within", ()):
            raise _skip(spec["name"], f"factor '{f}' has only the level(s) {present} in the "
                       f"{len(frame)} rows left after filtering; a model term needs at least "
                       f"2 levels (remove '{f}' from the formula or widen the filter)")
    for c in spec["center"]:
        if c not in numerics:
            raise _err(spec["name"], f"center: '{c}' is not a numeric column of the formula")
        frame[c] = frame[c] - frame[c].mean()
    return frame, factors, numerics


def _design(spec: dict, frame: pd.DataFrame) -> tuple[pd.DataFrame, patsy.DesignInfo]:
    try:
        _, X = patsy.dmatrices(spec["formula"], frame, NA_action="raise",
                               return_type="dataframe")
    except Exception as exc:
        raise _err(spec["name"], f"cannot build the design of {spec['formula']!r}: {exc}") from exc
    return X, X.design_info


def _check_same_design(spec: dict, X: pd.DataFrame, exog: np.ndarray, names: Sequence[str]):
    if list(X.columns) != list(names) or not np.allclose(X.to_numpy(), exog):
        raise RuntimeError(
            f"model '{spec['name']}': statsmodels built a different design matrix than patsy "
            f"({list(names)} vs {list(X.columns)}); set statsmodels.formula.options."
            "formula_engine = 'patsy'"
        )
    _check_rank(spec, exog)


def _check_rank(spec: dict, exog: np.ndarray) -> None:
    rank = np.linalg.matrix_rank(exog)
    if rank < exog.shape[1]:
        raise _skip(spec["name"], f"the design of {spec['formula']!r} is rank deficient (rank "
                   f"{rank} < {exog.shape[1]} columns): a factor has one level after filtering "
                   "or terms are confounded")


def _contrast_matrix(
    spec: dict,
    design_info: patsy.DesignInfo,
    frame: pd.DataFrame,
    factors: Sequence[str],
    numerics: Sequence[str],
) -> tuple[np.ndarray, list[dict]]:
    name = spec["name"]
    coef_names = list(design_info.column_names)
    Ls = []
    for c in spec["contrasts"]:
        if c["weights"]:
            unknown = [k for k in c["weights"] if k not in coef_names]
            if unknown:
                raise _err(name, f"contrast '{c['name']}': unknown coefficient(s) {unknown}; "
                           f"coefficients are {coef_names}")
            Ls.append(np.array([c["weights"].get(k, 0.0) for k in coef_names]))
            continue
        fixed = {**c["at"], **{k: None for k in c["diff"]}}
        for col in fixed:
            if col not in factors and col not in numerics:
                raise _err(name, f"contrast '{c['name']}': '{col}' is not a variable of the "
                           f"formula {spec['formula']!r}")
        for col, val in [*c["at"].items(), *[(k, v) for k, lv in c["diff"].items() for v in lv]]:
            if col in factors and val not in list(frame[col].cat.categories):
                ok = [v for v in frame[col].cat.categories if str(v) == str(val)]
                if not ok:
                    # a declared level missing from a small study: not estimable; else a typo
                    make = _skip if _declared(val, spec["levels"].get(col)) else _err
                    raise make(name, f"contrast '{c['name']}': {col}={val!r} is not a level "
                               f"in the analysed data {list(frame[col].cat.categories)}")
        free = [f for f in factors if f not in fixed]
        free_levels = [list(frame[f].cat.categories) for f in free]
        diff_items = list(c["diff"].items())
        records, weights = [], []
        n_free = int(np.prod([len(lv) for lv in free_levels])) if free else 1
        for signs in itertools.product((0, 1), repeat=len(diff_items)):
            sign = (-1) ** sum(signs)
            for combo in itertools.product(*free_levels) if free else [()]:
                rec: dict[str, Any] = {n: frame[n].mean() for n in numerics}
                rec.update(dict(zip(free, combo, strict=True)))
                rec.update(c["at"])
                for (col, lv), s in zip(diff_items, signs, strict=True):
                    rec[col] = lv[s]
                records.append(rec)
                weights.append(sign / n_free)
        grid = pd.DataFrame.from_records(records)
        for f in factors:
            cats = list(frame[f].cat.categories)
            mapped = [next((v for v in cats if str(v) == str(x)), x) for x in grid[f]]
            grid[f] = pd.Categorical(mapped, categories=cats)
        for col in numerics:
            grid[col] = grid[col].astype(float)
        Xg = np.asarray(patsy.build_design_matrices([design_info], grid)[0])
        L = np.asarray(weights) @ Xg
        if np.allclose(L, 0):
            raise _err(name, f"contrast '{c['name']}' is identically zero")
        Ls.append(L)
    return (np.vstack(Ls) if Ls else np.zeros((0, len(coef_names)))), spec["contrasts"]


def _default_describe_by(spec: dict, factors: Sequence[str]) -> list[str]:
    if spec["describe_by"] is not None:
        return spec["describe_by"]
    named = []
    for c in spec["contrasts"]:
        for k in [*c["diff"], *c["at"]]:
            if k in factors and k not in named:
                named.append(k)
    if named:
        return [f for f in factors if f in named]
    return list(factors)


def _coef_effect(term: str, b: float, t: float, df: float, frame, design, y: str, kind: str,
                 total_sd: float | None = None) -> tuple[float, str]:
    if term == "Intercept":
        return float("nan"), ""
    if term in design.columns and "[" not in term and ":" not in term:
        sx = float(np.std(design[term], ddof=1))
        sy = float(np.std(frame[y], ddof=1))
        return b * sx / sy, "standardized_beta"
    if kind == "ols":
        return t**2 / (t**2 + df), "partial_eta2"
    return b / total_sd, "cohens_d"


# --------------------------------------------------------------------------------------------
# OLS / ANCOVA
# --------------------------------------------------------------------------------------------


def _sum_coded_formula(formula: str, factors: Sequence[str]) -> tuple[str, dict[str, str]]:
    desc = patsy.ModelDesc.from_formula(formula)
    back: dict[str, str] = {}

    def conv(term: patsy.Term) -> patsy.Term:
        new = []
        for f in term.factors:
            if f.code in factors:
                code = f"C({f.code}, Sum)"
                back[code] = f.code
                new.append(patsy.EvalFactor(code))
            else:
                new.append(f)
        return patsy.Term(new)

    new = patsy.ModelDesc(desc.lhs_termlist, [conv(t) for t in desc.rhs_termlist])
    return new.describe(), back


def _run_ols(spec: dict, df: pd.DataFrame) -> pd.DataFrame:
    name, y = spec["name"], spec["outcome"]
    frame, factors, numerics = _formula_frame(spec, df)
    _check_one_row(spec, frame)
    sort_cols = [c for c in ("participant_id", "session") if c in frame.columns]
    if sort_cols:
        frame = frame.sort_values(sort_cols, kind="mergesort")
    X, dinfo = _design(spec, frame)
    if len(frame) <= X.shape[1]:
        raise _skip(name, f"{len(frame)} observations for {X.shape[1]} coefficients; need more "
                    "observations than coefficients")
    _check_rank(spec, X.to_numpy())
    res = smf.ols(spec["formula"], frame).fit()
    _check_same_design(spec, X, res.model.exog, res.model.exog_names)
    dfr = float(res.df_resid)
    n_obs, n_part = float(res.nobs), _n_participants(frame)
    ci = np.asarray(res.conf_int(0.05))
    rows = _describe(spec, frame, y, _default_describe_by(spec, factors))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, term in enumerate(res.model.exog_names):
            b, t = float(res.params.iloc[i]), float(res.tvalues.iloc[i])
            es, es_type = _coef_effect(term, b, t, dfr, frame, X, y, "ols")
            rows.append(_row(spec, "coefficient", term, estimate=b, se=float(res.bse.iloc[i]),
                             ci_low=ci[i, 0], ci_high=ci[i, 1], statistic=t, stat_type="t",
                             df=dfr, p=float(res.pvalues.iloc[i]), effect_size=es,
                             effect_size_type=es_type, n_obs=n_obs, n_participants=n_part))
        if spec["anova"] is not None:
            rows += _anova_rows(spec, frame, factors, numerics, res, n_obs, n_part)
        L, contrasts = _contrast_matrix(spec, dinfo, frame, factors, numerics)
        for Lrow, c in zip(L, contrasts, strict=True):
            tt = res.t_test(Lrow[None, :])
            est, se = float(np.ravel(tt.effect)[0]), float(np.ravel(tt.sd)[0])
            t = float(np.ravel(tt.tvalue)[0])
            lo, hi = np.ravel(tt.conf_int(alpha=0.05))
            rows.append(_row(spec, "contrast", c["name"], estimate=est, se=se, ci_low=lo,
                             ci_high=hi, statistic=t, stat_type="t", df=dfr,
                             p=float(np.ravel(tt.pvalue)[0]), effect_size=t**2 / (t**2 + dfr),
                             effect_size_type="partial_eta2", n_obs=n_obs,
                             n_participants=n_part))
    return _finish(rows)


def _anova_rows(spec, frame, factors, numerics, res, n_obs, n_part) -> list[dict]:
    typ = spec["anova"]
    if typ == 3:
        formula, back = _sum_coded_formula(spec["formula"], factors)
        fr = frame.copy()
        for c in numerics:  # Type III main effects are tested at the covariate means
            fr[c] = fr[c] - fr[c].mean()
        fit = smf.ols(formula, fr).fit()
        note = "Type III SS, sum-coded factors, centred covariates"
    else:
        fit, back = res, {}
        note = "Type II SS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tab = anova_lm(fit, typ=typ)
    ss_res = float(tab.loc["Residual", "sum_sq"])
    df_res = float(tab.loc["Residual", "df"])
    rows = []
    for term, r in tab.iterrows():
        if term in ("Intercept", "Residual"):
            continue
        label = ":".join(back.get(p, p) for p in str(term).split(":"))
        ss = float(r["sum_sq"])
        pe = ss / (ss + ss_res) if (ss + ss_res) > 0 else float("nan")
        rows.append(_row(spec, "anova", label, statistic=float(r["F"]), stat_type="F",
                         df=float(r["df"]), df2=df_res, p=float(r["PR(>F)"]), effect_size=pe,
                         effect_size_type="partial_eta2", n_obs=n_obs, n_participants=n_part,
                         note=note))
    return rows


# --------------------------------------------------------------------------------------------
# MixedLM
# --------------------------------------------------------------------------------------------


def _check_within(spec: dict, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    within, g, name = spec["within"], spec["groups"], spec["name"]
    if not within:
        return frame, ""
    levels = [list(frame[w].cat.categories) for w in within]
    for w, lv in zip(within, levels, strict=True):
        if len(lv) < 2:
            raise _skip(name, f"within-participant factor '{w}' has only level(s) {lv} after "
                        "filtering")
    required = set(itertools.product(*levels))
    counts = frame.groupby([g, *within], observed=True, sort=True).size()
    dups = counts[counts > 1]
    if len(dups):
        (pid, *cell), n = dups.index[0], int(dups.iloc[0])
        raise _err(name, f"participant {pid} has {n} rows at {_fmt_key(within, tuple(cell))}; "
                   "each participant needs one row per within-participant cell (refine the "
                   "filter, e.g. metabolite == 'Glu', or a drug/session condition)")
    bad: dict[Any, list[tuple]] = {}
    for pid, sub in frame.groupby(g, sort=True):
        have = set(sub[within].itertuples(index=False, name=None))
        missing = sorted(required - have, key=str)
        if missing:
            bad[pid] = missing
    if not bad:
        return frame, ""
    if spec["on_incomplete"] == "keep":
        return frame, f"{len(bad)} participant(s) with incomplete within-participant data kept"
    if spec["on_incomplete"] == "drop":
        kept = frame[~frame[g].isin(list(bad))]
        if kept.empty:
            raise _skip(name, "no participant has complete within-participant data")
        lacks = [
            f"{pid} (missing " + " and ".join(_fmt_key(within, m) for m in bad[pid]) + ")"
            for pid in sorted(bad, key=str)
        ]
        return kept, f"dropped incomplete participant(s): {', '.join(lacks)}"
    desc = []
    for pid, missing in list(bad.items())[:5]:
        have = sorted(set(frame.loc[frame[g] == pid, within].itertuples(index=False, name=None)),
                      key=str)
        if len(within) == 1:
            have_s = ", ".join(f"{within[0]}={h[0]}" for h in have)
            miss_s = ", ".join(f"{within[0]}={m[0]}" for m in missing)
            desc.append(f"participant {pid} has only {have_s} (missing {miss_s})")
        else:
            miss_s = "; ".join(f"({_fmt_key(within, m)})" for m in missing)
            desc.append(f"participant {pid} is missing {miss_s}")
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise _err(name, f"paired over {within}: " + "; ".join(desc) + more
               + "; set on_incomplete: drop (or keep) to override")


def satterthwaite_df(
    X: np.ndarray, groups: np.ndarray, var_u: float, var_e: float, L: np.ndarray
) -> np.ndarray:
    """Satterthwaite df of the contrasts ``L @ beta`` in a random-intercept model.

    ``V = var_u Z Z' + var_e I``; ``C = (X' V^-1 X)^-1``; for each row l, ``f = l' C l`` and
    ``df = 2 f² / (g' A g)`` with ``g_k = ∂f/∂θ_k = a' V_k a``, ``a = V^-1 X C l``, and A the
    inverse REML expected information ``I_ij = tr(P V_i P V_j)/2``,
    ``P = V^-1 - V^-1 X C X' V^-1`` (Satterthwaite 1946; Harville 1977; Kuznetsova et al. 2017).
    """
    L = np.atleast_2d(L)
    _, inv = np.unique(groups, return_inverse=True)
    n = len(groups)
    Z = np.zeros((n, inv.max() + 1))
    Z[np.arange(n), inv] = 1.0
    # V is block diagonal; per participant with m rows, V_i^-1 = (I - c J) / var_e with
    # c = var_u / (var_e + m var_u) (Sherman-Morrison)
    m = Z.sum(axis=0)
    c = var_u / (var_e + m * var_u)
    same = inv[:, None] == inv[None, :]
    Vi = (np.eye(n) - same * c[inv][:, None]) / var_e
    XtViX = X.T @ Vi @ X
    C = np.linalg.pinv(XtViX, hermitian=True)
    ViX = Vi @ X
    P = Vi - ViX @ C @ ViX.T
    PZ = P @ Z
    ZPZ = Z.T @ PZ
    # I_ij = tr(P V_i P V_j)/2 with V_1 = ZZ', V_2 = I
    info = 0.5 * np.array([
        [np.sum(ZPZ**2), np.sum(PZ**2)],
        [np.sum(PZ**2), np.sum(P**2)],
    ])
    A = np.linalg.pinv(info, hermitian=True)
    out = []
    for l in L:
        f = float(l @ C @ l)
        a = ViX @ (C @ l)
        g = np.array([float(np.sum((Z.T @ a) ** 2)), float(a @ a)])
        denom = float(g @ A @ g)
        out.append(2.0 * f**2 / denom if denom > 0 and np.isfinite(denom) else np.nan)
    return np.asarray(out)


def _fit_mixedlm(spec: dict, frame: pd.DataFrame):
    """REML fit, trying the optimizers in turn; the first converged fit wins.

    statsmodels' own list fallback stops at the first optimizer that *raises* (e.g. a singular
    X'V^-1X when a variance wanders towards 0), hence the explicit loop.
    """
    model = smf.mixedlm(spec["formula"], frame, groups=spec["groups"])
    failures: list[str] = []
    best = None
    for method in spec["optimizers"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = model.fit(reml=True, method=[method])
            except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
                failures.append(f"{method}: {exc}")
                continue
        # statsmodels' boundary warning uses an absolute threshold (0.01), meaningless for
        # outcomes with small variances (Glu in mmol/kg); the boundary is checked by the caller.
        notes = []
        for w in caught:
            msg = str(w.message).strip().splitlines()[0]
            if ("converge" in msg or "Hessian" in msg) and msg not in notes:
                notes.append(msg)
        ok = bool(res.converged) and np.all(np.isfinite(np.asarray(res.bse_fe)))
        if ok:
            if failures:
                notes.insert(0, f"optimizer {method} ({'; '.join(failures)})")
            return res, notes
        if best is None:
            best = (res, [f"optimizer {method} did not converge", *notes])
        failures.append(f"{method}: not converged")
    if best is None:
        raise _skip(spec["name"], "MixedLM fit failed with every optimizer: "
                    + "; ".join(failures))
    return best


def _run_mixedlm(spec: dict, df: pd.DataFrame) -> pd.DataFrame:
    name, y, g = spec["name"], spec["outcome"], spec["groups"]
    frame, factors, numerics = _formula_frame(spec, df, extra=[g, *spec["within"]])
    for w in spec["within"]:
        if not isinstance(frame[w].dtype, pd.CategoricalDtype):
            frame[w] = _as_categorical(name, frame[w], spec["levels"].get(w), w)
    frame, inc_note = _check_within(spec, frame)
    frame[g] = frame[g].astype(str)
    frame = frame.sort_values([g, *spec["within"]], kind="mergesort").reset_index(drop=True)
    for f in factors:  # participants dropped above may have removed a level
        frame[f] = frame[f].cat.remove_unused_categories()
    if frame[g].nunique() < 2:
        raise _skip(name, f"{frame[g].nunique()} level(s) of '{g}'; need at least 2 for a "
                    "random intercept")
    X, dinfo = _design(spec, frame)
    if len(frame) <= X.shape[1]:
        raise _skip(name, f"{len(frame)} observations for {X.shape[1]} fixed-effect "
                    "coefficients; need more observations than coefficients")
    _check_rank(spec, X.to_numpy())
    res, notes = _fit_mixedlm(spec, frame)
    if inc_note:
        notes.insert(0, inc_note)
    k = len(res.model.exog_names)
    _check_same_design(spec, X, res.model.exog, res.model.exog_names)
    var_u = float(np.asarray(res.cov_re)[0, 0])
    var_e = float(res.scale)
    total_sd = math.sqrt(var_u + var_e)
    if var_u < 1e-8 * max(var_e, 1e-300):
        notes.append("random-intercept variance at the boundary (0)")
    fe = np.asarray(res.fe_params)
    cov = np.asarray(res.cov_params())[:k, :k]
    n_obs, n_part = float(res.nobs), float(frame[g].nunique())
    L_coef = np.eye(k)
    L_con, contrasts = _contrast_matrix(spec, dinfo, frame, factors, numerics)
    L_all = np.vstack([L_coef, L_con])
    est = L_all @ fe
    se = np.sqrt(np.einsum("ij,jk,ik->i", L_all, cov, L_all))
    stat = est / se
    if spec["inference"] == "satterthwaite":
        try:
            with np.errstate(all="ignore"):
                dfs = satterthwaite_df(res.model.exog, np.asarray(res.model.groups), var_u, var_e,
                                       L_all)
        except np.linalg.LinAlgError:
            dfs = np.full(len(L_all), np.nan)
    else:
        dfs = np.full(len(L_all), np.nan)
    note = "; ".join(notes)
    rows = _describe(spec, frame, y, _default_describe_by(spec, factors))
    terms = [("coefficient", t) for t in res.model.exog_names]
    terms += [("contrast", c["name"]) for c in contrasts]
    for i, (section, term) in enumerate(terms):
        d = float(dfs[i])
        if np.isfinite(d):
            stat_type = "t"
            p = float(2 * sps.t.sf(abs(stat[i]), d))
            crit = float(sps.t.ppf(0.975, d))
        else:
            stat_type, d = "z", float("nan")
            p = float(2 * sps.norm.sf(abs(stat[i])))
            crit = _Z975
        if section == "coefficient":
            es, es_type = _coef_effect(term, float(est[i]), float(stat[i]), d, frame, X, y,
                                       "mixedlm", total_sd)
        else:
            es, es_type = float(est[i]) / total_sd, "cohens_d"
        rows.append(_row(spec, section, term, estimate=float(est[i]), se=float(se[i]),
                         ci_low=float(est[i] - crit * se[i]), ci_high=float(est[i] + crit * se[i]),
                         statistic=float(stat[i]), stat_type=stat_type, df=d, p=p,
                         effect_size=es, effect_size_type=es_type, n_obs=n_obs,
                         n_participants=n_part, note=note))
    icc = var_u / (var_u + var_e) if var_u + var_e > 0 else float("nan")
    for term, val in ((f"var({g})", var_u), ("var(residual)", var_e), ("icc", icc)):
        rows.append(_row(spec, "variance", term, estimate=val, n_obs=n_obs,
                         n_participants=n_part, note="REML"))
    return _finish(rows)


# --------------------------------------------------------------------------------------------
# correlation
# --------------------------------------------------------------------------------------------


def fisher_ci(r: float, n: int, se_z: float | None = None) -> tuple[float, float]:
    """95 % CI of a correlation by the Fisher z transform (default SE 1/sqrt(n-3))."""
    se_z = 1.0 / math.sqrt(n - 3) if se_z is None else se_z
    z = math.atanh(float(np.clip(r, -1 + 1e-15, 1 - 1e-15)))
    return math.tanh(z - _Z975 * se_z), math.tanh(z + _Z975 * se_z)


def _run_correlation(spec: dict, tables: Mapping[str, pd.DataFrame | None]) -> pd.DataFrame:
    name = spec["name"]
    xs, ys = spec["x"], spec["y"]
    base = None
    dropped: list[str] = spec.get("_notes", [])
    if not (xs["own"] and ys["own"]):
        base = _source_frame(name, spec["table"], spec["filter"], spec["derive"], tables,
                             dropped, spec["levels"])
    parts = []
    for src in (xs, ys):
        if src["own"]:
            parts.append(_source_frame(name, src["table"], src["filter"], src["derive"], tables,
                                       dropped, spec["levels"]))
        else:
            parts.append(base)
    xcol, ycol = xs["column"], ys["column"]
    if xcol == ycol:
        raise _err(name, f"x and y are the same column '{xcol}'")
    if parts[0] is parts[1]:
        data = parts[0]
    else:
        on = spec["merge_on"]
        for key, part, col in (("x", parts[0], xcol), ("y", parts[1], ycol)):
            miss = [c for c in [*on, col] if c not in part.columns]
            if miss:
                raise _err(name, f"{key}: column(s) {miss} not in its data"
                           + (" (after derive)" if spec[key].get("derive") else ""))
            dup = part[part.duplicated(on, keep=False)]
            if len(dup):
                first = tuple(dup[on].iloc[0])
                raise _err(name, f"{key} has several rows for {_fmt_key(on, first)}; the "
                           f"merge keys {on} must identify one row (refine the filter)")
        left = parts[0].drop(columns=[ycol], errors="ignore")
        data = left.merge(parts[1][[*on, ycol]], on=on, how="inner", validate="one_to_one")
        if data.empty:
            raise _skip(name, f"x and y have no {'/'.join(on)} in common")
    frame, _, _ = _model_frame(spec, data, [xcol, ycol])
    if parts[0] is parts[1]:
        _check_one_row(spec, frame)
    n = len(frame)
    if n < 4:
        raise _skip(name, f"{n} complete pairs; need at least 4 for a correlation with a CI")
    x, y = frame[xcol].to_numpy(float), frame[ycol].to_numpy(float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise _skip(name, "x or y is constant")
    rows = _describe(spec, frame, xcol, []) + _describe(spec, frame, ycol, [])
    n_part = _n_participants(frame)
    for method in spec["method"]:
        if method == "pearson":
            res = sps.pearsonr(x, y)
            r, p, es_type, se_z = float(res.statistic), float(res.pvalue), "r", None
        else:
            res = sps.spearmanr(x, y)
            r, p, es_type = float(res.statistic), float(res.pvalue), "rho"
            se_z = math.sqrt(1.06 / (n - 3))
        lo, hi = fisher_ci(r, n, se_z)
        se = math.sqrt(max(1 - r**2, 0.0) / (n - 2))
        rows.append(_row(spec, "test", f"{method}({xcol}, {ycol})", estimate=r, se=se,
                         ci_low=lo, ci_high=hi, statistic=r, stat_type="r", df=float(n - 2),
                         p=p, effect_size=r, effect_size_type=es_type, es_ci_low=lo,
                         es_ci_high=hi, n_obs=float(n), n_participants=n_part,
                         note="Fisher-z CI" + (" (Fieller SE)" if method == "spearman" else "")))
    return _note_dropped(_finish(rows), dropped)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def run_model(
    spec: Mapping,
    metabolites: pd.DataFrame | None,
    craving: pd.DataFrame | None,
    participants: pd.DataFrame | None,
    *,
    levels: Mapping | None = None,
) -> pd.DataFrame:
    """Validate, build the analysis frame for and fit one model; return its tidy rows.

    ``levels`` overrides :data:`DEFAULT_LEVELS` (and is itself overridden by ``spec['levels']``).
    Raises :class:`ModelSpecError` (a ``ValueError`` naming the model) on bad specs or data,
    :class:`InestimableError` (a subclass) when the data cannot estimate the model.
    """
    s = validate_spec(spec, metabolites, craving, participants, levels=levels)
    tables = {"metabolites": metabolites, "craving": craving, "participants": participants}
    dropped: list[str] = []
    s = {**s, "_notes": dropped}  # who the model leaves out, and why (its note column)
    if s["kind"] == "correlation":
        return _run_correlation(s, tables)
    df = _source_frame(s["name"], s["table"], s["filter"], s["derive"], tables, dropped,
                       s["levels"])
    if s["kind"] == "welch_t":
        return _note_dropped(_run_welch(s, df), dropped)
    if s["kind"] == "ols":
        return _note_dropped(_run_ols(s, df), dropped)
    return _note_dropped(_run_mixedlm(s, df), dropped)


def run_all(
    models: Sequence[Mapping],
    metabolites: pd.DataFrame | None,
    craving: pd.DataFrame | None,
    participants: pd.DataFrame | None,
    *,
    levels: Mapping | None = None,
    on_inestimable: str = "skip",
) -> dict[str, pd.DataFrame]:
    """Run every model (config order); all specs are validated before any is fitted.

    A model the data cannot estimate (:class:`InestimableError`) becomes its
    :func:`skipped_table` with ``on_inestimable='skip'``, or stops the run with ``'error'``;
    spec errors always stop it.
    """
    if on_inestimable not in ON_INESTIMABLE:
        raise ModelSpecError(f"on_inestimable must be one of {list(ON_INESTIMABLE)}, got "
                             f"{on_inestimable!r}")
    names = [m.get("name") if isinstance(m, Mapping) else None for m in models]
    dups = sorted({n for n in names if n is not None and names.count(n) > 1})
    if dups:
        raise ModelSpecError(f"duplicate model name(s) {dups}")
    specs = [validate_spec(m, metabolites, craving, participants, levels=levels) for m in models]
    out = {}
    for m, s in zip(models, specs, strict=True):
        try:
            out[s["name"]] = run_model(m, metabolites, craving, participants, levels=levels)
        except InestimableError as exc:
            if on_inestimable == "error":
                raise InestimableError(exc.model, f"{exc.reason} (stats.on_inestimable: error; "
                                       "'skip' reports the model as skipped)") from exc
            out[s["name"]] = skipped_table(s, exc.reason)
    return out


def skipped_table(spec: Mapping, reason: str) -> pd.DataFrame:
    """The table of a model not estimable with the data present: one row, section
    ``skipped``, the reason in ``note`` (the :data:`COLUMNS` contract)."""
    s = spec if "levels" in spec else _normalize_spec(spec)
    return _finish([_row(s, SKIPPED, "", note=reason)])


def skip_reason(table: pd.DataFrame) -> str | None:
    """Why a model's table says it was skipped (None for an estimated model)."""
    sk = table[table["section"] == SKIPPED] if "section" in table.columns else table.iloc[:0]
    if sk.empty:
        return None
    note = sk["note"].iloc[0]
    return str(note) if isinstance(note, str) and note else "not estimable with these data"


def write_tables(results: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """One ``<model>.tsv`` per model plus ``all_models.tsv`` (models in the given order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    frames = []
    for name, df in results.items():
        df = df.reindex(columns=COLUMNS)
        frames.append(df)
        path = out / f"{name}.tsv"
        df.to_csv(path, sep="\t", index=False, float_format=_FLOAT_FORMAT, na_rep="NA",
                  lineterminator="\n")
        paths.append(path)
    all_df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    path = out / "all_models.tsv"
    all_df.to_csv(path, sep="\t", index=False, float_format=_FLOAT_FORMAT, na_rep="NA",
                  lineterminator="\n")
    paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------

_MINUS = "\u2212"


def _num(x: float, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "NA"
    s = f"{x:.{digits}f}"
    if float(s) == 0:
        s = s.lstrip("-")
    return s.replace("-", _MINUS)


def _num_nolead(x: float, digits: int = 2) -> str:
    """Numbers bounded by 1 (r, p, eta²) without the leading zero (APA)."""
    s = _num(x, digits)
    return s.replace("0.", ".", 1) if s.lstrip(_MINUS).startswith("0.") else s


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "p = NA"
    if p < 0.001:
        return "p < .001"
    if p > 0.999:
        return "p > .999"
    return f"p = {_num_nolead(p, 3)}"


def _df(d: float) -> str:
    if not np.isfinite(d):
        return "NA"
    return f"{d:.0f}" if abs(d - round(d)) < 0.05 else f"{d:.1f}"


def _stat(row: pd.Series, digits: int) -> str:
    st = row["stat_type"]
    if st == "z":
        return f"z = {_num(row['statistic'], digits)}"
    if st == "F":
        return f"F({_df(row['df'])}, {_df(row['df2'])}) = {_num(row['statistic'], digits)}"
    return f"t({_df(row['df'])}) = {_num(row['statistic'], digits)}"


def _ci(lo: float, hi: float, digits: int) -> str:
    return f"[95 % CI {_num(lo, digits)}, {_num(hi, digits)}]"


def _summary_welch(df: pd.DataFrame, label: str, ctx: dict) -> list[str]:
    dg, alpha = ctx["digits"], ctx["alpha"]
    test = df[df["section"] == "test"].iloc[0]
    lvl, ref = [s.strip() for s in test["term"].split(" - ", 1)]
    desc = df[df["section"] == "descriptive"].set_index("term")
    by = desc.index[0].split("[", 1)[1].split("=", 1)[0]
    d1, d0 = desc.loc[f"mean[{by}={lvl}]"], desc.loc[f"mean[{by}={ref}]"]

    def md(r: pd.Series) -> str:
        return f"M = {_num(r['estimate'], dg)}, SD = {_num(r['sd'], dg)}, n = {int(r['n_obs'])}"

    stats = (f"Welch t({_df(test['df'])}) = {_num(test['statistic'], dg)}, {_p(test['p'])}, "
             f"Hedges' g = {_num(test['effect_size'], dg)} "
             f"{_ci(test['es_ci_low'], test['es_ci_high'], dg)}")
    unit = ctx["units"].get(test["outcome"], "")
    unit = f" {unit}" if unit else ""
    diff = (f"The mean difference ({lvl} {_MINUS} {ref}) was {_num(test['estimate'], dg)}{unit} "
            f"{_ci(test['ci_low'], test['ci_high'], dg)}.")
    if test["p"] < alpha:
        word = "lower" if test["estimate"] < 0 else "higher"
        s = (f"{label} was {word} in {lvl} ({md(d1)}) than in {ref} ({md(d0)}; {stats}). {diff}")
    else:
        s = (f"{label} did not differ significantly between {lvl} ({md(d1)}) and {ref} "
             f"({md(d0)}; {stats}). {diff}")
    return [s]


def _contrast_sentence(r: pd.Series, clabel: str, ctx: dict) -> str:
    dg = ctx["digits"]
    es = ""
    if r["effect_size_type"] == "cohens_d":
        es = f", d = {_num(r['effect_size'], dg)}"
    elif r["effect_size_type"] == "partial_eta2":
        es = f", partial η² = {_num_nolead(r['effect_size'], dg + 1)}"
    return (f"{clabel}: estimate = {_num(r['estimate'], dg)} {_ci(r['ci_low'], r['ci_high'], dg)}, "
            f"{_stat(r, dg)}, {_p(r['p'])}{es}.")


def _summary_formula(df: pd.DataFrame, label: str, spec: Mapping | None, ctx: dict) -> list[str]:
    dg = ctx["digits"]
    kind = df["kind"].iloc[0]
    first = df[df["section"] != "descriptive"].iloc[0]
    n_obs, n_part = int(first["n_obs"]), first["n_participants"]
    formula = f" ({spec['formula']})" if spec and spec.get("formula") else ""
    who = f" from {int(n_part)} participants" if np.isfinite(n_part) else ""
    lines = []
    if kind == "ols":
        lines.append(f"{label} was analysed by OLS regression{formula}, n = {n_obs}{who}.")
    else:
        groups = (spec or {}).get("groups", "participant_id")
        inf = "Satterthwaite-df t-tests" if (df["stat_type"] == "t").any() else "Wald z-tests"
        lines.append(f"{label} was analysed with a linear mixed model{formula} with a random "
                     f"intercept per {groups} (REML; {n_obs} observations{who}; {inf}).")
    desc = df[df["section"] == "descriptive"]
    if len(desc):
        cells = "; ".join(f"{r['term'].removeprefix('mean[').removesuffix(']')}: "
                          f"M = {_num(r['estimate'], dg)}, SD = {_num(r['sd'], dg)}"
                          for _, r in desc.iterrows())
        lines.append(f"Cell means: {cells}.")
    anova = df[df["section"] == "anova"]
    if len(anova):
        parts = [f"{r['term']}: {_stat(r, dg)}, {_p(r['p'])}, partial η² = "
                 f"{_num_nolead(r['effect_size'], dg + 1)}" for _, r in anova.iterrows()]
        lines.append(f"ANOVA ({anova['note'].iloc[0]}): " + "; ".join(parts) + ".")
    clabels = {c.get("name"): c.get("label", c.get("name"))
               for c in _check_contrasts("summary", (spec or {}).get("contrasts"))}
    for _, r in df[df["section"] == "contrast"].iterrows():
        lines.append(_contrast_sentence(r, clabels.get(r["term"], r["term"]), ctx))
    coefs = df[(df["section"] == "coefficient") & (df["term"] != "Intercept")]
    if len(coefs):
        parts = [f"{r['term']}: b = {_num(r['estimate'], dg)}, SE = {_num(r['se'], dg)}, "
                 f"{_stat(r, dg)}, {_p(r['p'])}" for _, r in coefs.iterrows()]
        lines.append("Coefficients (treatment coding): " + "; ".join(parts) + ".")
    var = df[df["section"] == "variance"].set_index("term")
    if "icc" in var.index:
        lines.append(f"ICC = {_num_nolead(var.loc['icc', 'estimate'], dg)}.")
    notes = sorted({n for n in df["note"] if n and n not in ("REML",) and "SS" not in n})
    if kind == "mixedlm" and notes:
        lines.append("Note: " + "; ".join(notes) + ".")
    return lines


def _summary_correlation(df: pd.DataFrame, label: str, ctx: dict) -> list[str]:
    dg, alpha = ctx["digits"], ctx["alpha"]
    out = []
    for i, (_, r) in enumerate(df[df["section"] == "test"].iterrows()):
        m = re.match(r"^(\w+)\((.+), (.+)\)$", r["term"])
        method, x, y = m.groups() if m else ("pearson", "x", "y")
        xl, yl = ctx["labels"].get(x, x), ctx["labels"].get(y, y)
        sym = "Pearson r" if method == "pearson" else "Spearman ρ"
        ci = f"[95 % CI {_num_nolead(r['ci_low'], dg)}, {_num_nolead(r['ci_high'], dg)}]"
        stats = f"{sym} = {_num_nolead(r['estimate'], dg)} {ci}, {_p(r['p'])}"
        n = f"n = {int(r['n_obs'])}"
        if i:
            out.append(f"{stats}.")
        elif r["p"] < alpha:
            word = "positively" if r["estimate"] > 0 else "negatively"
            out.append(f"{label}: {xl} was {word} correlated with {yl} ({stats}, {n}).")
        else:
            out.append(f"{label}: {xl} was not significantly correlated with {yl} ({stats}, {n}).")
    return out


def write_summary_md(
    results: Mapping[str, pd.DataFrame],
    path: str | Path,
    *,
    context: Mapping | None = None,
) -> Path:
    """Write ``summary.md``: one results-section paragraph per model, from the result tables.

    ``context`` (all optional): ``title``; ``models`` (the spec list: model ``label`` and
    ``formula``, contrast labels); ``labels`` (column -> readable name, e.g.
    ``{"conc_molal": "Glu"}``); ``units`` (column -> unit); ``alpha`` (0.05); ``digits`` (2).
    """
    context = dict(context or {})
    specs = {m["name"]: m for m in context.get("models", []) if isinstance(m, Mapping)}
    ctx = {
        "digits": int(context.get("digits", 2)),
        "alpha": float(context.get("alpha", 0.05)),
        "labels": dict(context.get("labels", {})),
        "units": dict(context.get("units", {})),
    }
    lines = [f"# {context.get('title', 'Statistical results')}", ""]
    lines.append(
        "Generated by `mrsflow.stats` from the result tables; estimates are in the units of the "
        "outcome, 95 % confidence intervals, two-sided p-values, α = "
        f"{_num_nolead(ctx['alpha'], 2)}. Factors are treatment-coded (reference: first level)."
    )
    lines.append("")
    skipped = [n for n, df in results.items() if not df.empty and skip_reason(df) is not None]
    if skipped:
        lines += [f"Not estimable with these data, hence skipped: {len(skipped)} of "
                  f"{len(results)} models ({', '.join(f'`{n}`' for n in skipped)}); the reason "
                  "is given in each model's section and in the `note` column of its table.", ""]
    for name, df in results.items():
        if df.empty:
            continue
        spec = specs.get(name)
        outcome = df["outcome"].iloc[0]
        label = (spec or {}).get("label") or ctx["labels"].get(outcome, outcome)
        lines += [f"## {label} (`{name}`)", ""]
        kind = df["kind"].iloc[0]
        reason = skip_reason(df)
        if reason is not None:
            body = [f"Skipped: not estimable with these data ({reason})."]
        elif kind == "welch_t":
            body = _summary_welch(df, label, ctx)
        elif kind == "correlation":
            body = _summary_correlation(df, label, ctx)
        else:
            body = _summary_formula(df, label, spec, ctx)
        lines += [" ".join(body), ""]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines), encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------
# I/O conveniences for the Snakemake rule
# --------------------------------------------------------------------------------------------


def read_tables(
    metabolites: str | Path, craving: str | Path, participants: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the three TSVs (participant_id and session as strings, qc_pass as bool)."""
    def rd(p):
        return pd.read_csv(p, sep="\t", dtype={"participant_id": str, "session": str})

    met, crav, part = rd(metabolites), rd(craving), rd(participants)
    if "qc_pass" in met.columns and not pd.api.types.is_bool_dtype(met["qc_pass"]):
        met["qc_pass"] = met["qc_pass"].astype(str).str.lower().isin(["true", "1", "yes"])
    return met, crav, part


def load_stats_config(path: str | Path) -> dict:
    """Read the ``stats`` block (``models``, ``levels``, ``labels``, ``units``, ``alpha``,
    ``on_inestimable``)."""
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    return cfg.get("stats", cfg)


def run_stats(
    stats_config: Mapping,
    metabolites: pd.DataFrame,
    craving: pd.DataFrame,
    participants: pd.DataFrame,
    out_dir: str | Path,
    summary_md: str | Path,
) -> dict[str, pd.DataFrame]:
    """Run all models of a ``stats`` config block and write the tables and summary
    (``on_inestimable``: skip, the default, or error)."""
    models = list(stats_config["models"])
    levels = stats_config.get("levels")
    results = run_all(models, metabolites, craving, participants, levels=levels,
                      on_inestimable=stats_config.get("on_inestimable", "skip"))
    write_tables(results, out_dir)
    write_summary_md(
        results,
        summary_md,
        context={
            "models": models,
            "labels": stats_config.get("labels", {}),
            "units": stats_config.get("units", {}),
            "alpha": stats_config.get("alpha", 0.05),
            "title": stats_config.get("title", "Statistical results"),
        },
    )
    return results
