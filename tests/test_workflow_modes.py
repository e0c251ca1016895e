"""The classic acquisition style (water-suppressed spectrum + separate water reference,
pre-averaged on the scanner) through the real DAG, on the Siemens RDA exports of the twin:
conversion (spec2nii rda), classic preprocessing, fitting and quantification.

The metabolite-cycling Philips path runs through the DAG in the other workflow tests.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import snakemake_with_override


@pytest.mark.slow
def test_classic_siemens_twin_through_the_dag(tmp_path):
    override = {"twin": {"n_cud": 2, "n_hc": 2, "mode": "classic", "vendor": "siemens"}}
    proc = snakemake_with_override(tmp_path, override, "results/tables/metabolites.tsv",
                                   "results/twin/truth/concentrations.tsv", "--cores", "2",
                                   timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = tmp_path / "results" / "twin" / "raw"
    scans = pd.read_csv(raw / "scans.tsv", sep="\t")
    assert set(scans.acq) == {"ws"}
    assert scans.mrs.str.endswith(".rda").all() and scans.water.str.endswith(".rda").all()
    for rel in scans.mrs.tolist() + scans.water.tolist():
        assert (raw / rel).read_bytes().startswith(b">>> Begin of header <<<")

    met = pd.read_csv(tmp_path / "results" / "tables" / "metabolites.tsv", sep="\t")
    truth = pd.read_csv(tmp_path / "results" / "twin" / "truth" / "concentrations.tsv", sep="\t")
    assert met[["participant_id", "session", "film"]].drop_duplicates().shape[0] == 12
    x = met.merge(
        truth, on=["participant_id", "session", "film", "metabolite"], suffixes=("", "_true")
    )
    for name in ("NAA", "Glu", "Cr"):
        err = (x[x.metabolite == name].conc_molal / x[x.metabolite == name].conc_molal_true) - 1
        # classic, scanner-averaged data: drift is averaged in, but concentrations stay close
        assert abs(err.median()) < 0.1, (name, err.tolist())
    assert met.qc_pass.all()
