"""The ISMRM 2016 fitting challenge (../shared/reference; skipped where absent) through
bench/bench_ismrm2016.py: the fitting engine and the water scaling on spectra the project
did not make.

With the challenge's own basis (its measured macromolecule spectrum) the builtin fitter
lands inside what LCModel 6.3 and FSL-MRS 2.4 report, or within 10 % of the nearer, for at
least 11 of the 12 datasets on every reported metabolite, and reads the Cr water-scaling
test within 1 % of its exact-area answer (10.82 mM) with either basis. The project's own
basis with its default macromolecule model does not yet reach that agreement (README,
Accuracy on data the project did not make); the benchmark prints those numbers.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from _ismrm2016 import DEFAULT, anchors, challenge_basis, datasets  # noqa: E402
from bench_ismrm2016 import CR_TEST_MM, fit_all, own_basis, report  # noqa: E402

pytestmark = pytest.mark.skipif(not (DEFAULT / "datasets_text").is_dir(),
                                reason=f"{DEFAULT} is absent (not shipped with the project)")
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def data():
    return datasets(DEFAULT), anchors(DEFAULT)


def test_challenge_basis_agrees_with_lcmodel_and_fsl_mrs(data, capsys):
    spectra, table = data
    conc, seconds = fit_all(spectra, challenge_basis(DEFAULT), CONFIG["fitting"])
    hits, n_sets = report("challenge", conc, table, seconds)
    assert n_sets == 12
    assert all(v >= 11 for v in hits.values()), hits
    assert conc[0]["tCr"] == pytest.approx(CR_TEST_MM, rel=0.01)


def test_own_basis_reads_the_cr_test(data):
    spectra, table = data
    conc, _ = fit_all({0: spectra[0]}, own_basis(CONFIG), CONFIG["fitting"])
    assert conc[0]["tCr"] == pytest.approx(CR_TEST_MM, rel=0.01)
