"""Agreement of two fitting backends (mrsflow.agreement) on pairs with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mrsflow import agreement as A


def _fit(amps: dict, water=1000.0, success=True, backend="builtin"):
    return {"backend": backend, "success": success, "water_amplitude": water,
            "metabolites": {k: {"amplitude": v} for k, v in amps.items()}, "combined": {}}


def test_bias_limits_ratio_and_r_of_a_known_relation():
    """other = 0.9 x primary x (1 + e), e alternating +-2 %: median ratio 0.9, bias
    -10.5 % (the % difference of 0.9 about the mean), limits about the spread, r near 1;
    a scan one backend did not fit is left out of the pairs."""
    rng = np.random.default_rng(0)
    glu = rng.uniform(5, 15, 40)
    e = np.where(np.arange(40) % 2, 0.02, -0.02)
    primary = [_fit({"Glu": g}) for g in glu]
    other = [_fit({"Glu": 0.9 * g * (1 + x)}, backend="lcmodel")
             for g, x in zip(glu, e, strict=True)]
    other[3] = _fit({}, success=False, backend="lcmodel")
    pairs = A.paired_amplitudes(primary, other)
    assert len(pairs) == 39
    row = A.agreement_table(pairs, "builtin", "lcmodel").set_index("metabolite").loc["Glu"]
    assert row.n == 39
    assert row.median_ratio == pytest.approx(0.9, rel=0.025)
    d = 100 * (0.9 * (1 + e) - 1) / ((0.9 * (1 + e) + 1) / 2)
    d = np.delete(d, 3)
    assert row.bias_pct == pytest.approx(d.mean(), abs=1e-9)
    assert row.loa_high_pct - row.loa_low_pct == pytest.approx(2 * 1.96 * d.std(ddof=1))
    assert row.r > 0.99


def test_run_writes_the_table_and_figure_and_names_the_resolved_primary(tmp_path):
    paths = {"p": [], "o": []}
    for i, g in enumerate(np.linspace(6, 14, 8)):
        for key, k, backend in (("p", 1.0, "builtin"), ("o", 1.05, "lcmodel")):
            f = tmp_path / f"{key}{i}.json"
            f.write_text(json.dumps(_fit({"Glu": k * g, "NAA": 12 * k}, backend=backend)))
            paths[key].append(f)
    bench = tmp_path / "b.tsv"
    bench.write_text("s\th:m:s\n2.5\t0:00:02\n")
    t = A.run(paths["p"], paths["o"], primary="auto", other="lcmodel", tsv=tmp_path / "a.tsv",
              png=tmp_path / "a.png", benchmarks=([bench], [bench, bench]))
    back = pd.read_csv(tmp_path / "a.tsv", sep="\t").set_index("metabolite")
    assert back.loc["Glu", "primary"] == "builtin"  # 'auto' as the fits resolved it
    assert back.loc["Glu", "median_ratio"] == pytest.approx(1.05)
    assert (back.seconds_primary.iloc[0], back.seconds_other.iloc[0]) == (2.5, 5.0)
    assert np.isnan(back.loc["NAA", "r"])  # constant: no correlation, said as NaN
    assert len(t) == 2 and (tmp_path / "a.png").stat().st_size > 10_000
