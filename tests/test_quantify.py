"""Water-scaled, tissue- and relaxation-corrected quantification (Gasparovic 2006)."""

from __future__ import annotations

import math

import pytest

from mrsflow import quantify as q

TEXTBOOK = {"gm": 0.6, "wm": 0.4, "csf": 0.0}


def test_textbook_water_concentration_and_metabolite_factor():
    """DESIGN.md: GM/WM 60/40 %, alpha 0.78/0.65, water T2 110/80 ms, metabolite T2 160 ms,
    TE 30 ms, TR >> T1 -> 29 697 mM and 1.206."""
    p = q.QuantParams(metab_t2_ms=160.0)
    w = q.visible_water_mM(TEXTBOOK, te_ms=30.0, tr_ms=math.inf, p=p)
    assert w == pytest.approx(29_697, abs=1.0)
    r_m = q.relaxation_factor(30.0, math.inf, p.metab_t1_ms, p.metab_t2_ms)
    assert 1.0 / r_m == pytest.approx(1.206, abs=5e-4)


def test_concentrations_invert_signal_amplitudes():
    p = q.QuantParams()
    frac = {"gm": 0.55, "wm": 0.35, "csf": 0.10}
    conc = {"Glu": 10.5, "NAA": 11.0}
    amps = q.signal_amplitudes(conc, frac, 30.0, 2000.0, p, water_amplitude=5.0e4)
    back = q.concentrations(amps, 5.0e4, frac, 30.0, 2000.0, p)
    for name, c in conc.items():
        assert back[name][0] == pytest.approx(c, rel=1e-12)


def test_molal_by_hand():
    """Pure GM voxel, TR = inf: c = (A_M/A_W) * 2 * 55510 * alpha R_W / (R_M alpha)."""
    p = q.QuantParams()
    frac = {"gm": 1.0, "wm": 0.0, "csf": 0.0}
    c = q.concentrations({"Cr": 3.0}, 1000.0, frac, 30.0, math.inf, p)["Cr"][0]
    expected = 3.0 / 1000.0 * 2 * 55_510 * math.exp(-30 / 110) / math.exp(-30 / 160)
    assert c == pytest.approx(expected, rel=1e-12)


def test_csf_dilutes_molar_but_not_molal():
    """Adding CSF to a voxel at fixed tissue concentration: the water signal grows, the
    metabolite signal shrinks, and the correction returns the same molal value."""
    p = q.QuantParams()
    tissue = {"gm": 0.6, "wm": 0.4, "csf": 0.0}
    with_csf = {"gm": 0.48, "wm": 0.32, "csf": 0.2}
    for frac in (tissue, with_csf):
        amps = q.signal_amplitudes({"NAA": 12.0}, frac, 30.0, 2000.0, p, 1.0e4)
        molal, molar = q.concentrations(amps, 1.0e4, frac, 30.0, 2000.0, p)["NAA"]
        assert molal == pytest.approx(12.0)
        # molar per litre of tissue = molal * tissue water density of GM/WM
        assert molar == pytest.approx(12.0 * (0.6 * 0.78 + 0.4 * 0.65), rel=1e-9)


@pytest.mark.parametrize(
    "frac",
    [
        {"gm": 0.5, "wm": 0.6, "csf": 0.0},
        {"gm": -0.1, "wm": 0.6, "csf": 0.5},
        {"gm": 0, "wm": 0, "csf": 1},
    ],
)
def test_bad_fractions_are_refused(frac):
    with pytest.raises(ValueError, match="fraction|CSF"):
        q.visible_water_mM(frac, 30.0, 2000.0, q.QuantParams())


def test_creatine_phantom_through_fit_and_quantify(tmp_path):
    """A creatine-only spectrum simulated at 10 mM (with its water reference) comes out at
    10.0 +- 0.1 mM through the whole fit + quantify path (NIfTI-MRS files, builtin fitter)."""
    import json

    import numpy as np

    from mrsflow import fit, nmrs
    from mrsflow.basis import Sequence, simulate_basis, write_fsl_basis

    seq = Sequence(f0_mhz=127.8, te1_ms=12.0, te2_ms=18.0, dwell_s=5e-4, npoints=2048)
    basis_dir = tmp_path / "basis"
    write_fsl_basis(basis_dir, simulate_basis(seq, ["Cr", "NAA", "Glu", "Ins"], []), seq)
    p = q.QuantParams()
    frac = {"gm": 0.6, "wm": 0.3, "csf": 0.1}
    te, tr = 30.0, 2000.0
    molar = 10.0
    molal = molar * (frac["gm"] + frac["wm"]) / q.tissue_water_kg_per_l(frac, p)
    water_amp = q.visible_water_mM(frac, te, tr, p)
    amp = q.signal_amplitudes({"Cr": molal}, frac, te, tr, p, water_amp)["Cr"]
    cr = simulate_basis(seq, ["Cr"], [])["Cr"]
    t = np.arange(seq.npoints) * seq.dwell_s
    lineshape = np.exp(-np.pi * 3.0 * t - (np.pi * 4.0 * t) ** 2 / (4 * np.log(2)))
    metab = amp * cr * lineshape
    water = water_amp * lineshape  # water singlet at 4.65 ppm (0 Hz), same lineshape
    rng = np.random.default_rng(0)
    metab = metab + 1e-4 * amp * (rng.standard_normal(t.size) + 1j * rng.standard_normal(t.size))
    files = {}
    for name, fid in (("metab", metab), ("water", water)):
        files[name] = nmrs.write(
            tmp_path / f"{name}.nii.gz", fid.reshape(1, 1, 1, -1), seq.dwell_s, seq.f0_mhz
        )
    out = fit.run_fit(
        files["metab"],
        files["water"],
        basis_dir,
        tmp_path / "fit.json",
        tmp_path / "fit.tsv",
        tmp_path / "fit.png",
        backend="builtin",
    )
    result = json.loads((tmp_path / "fit.json").read_text())
    assert result["water_amplitude"] == pytest.approx(water_amp, rel=1e-3)
    amps = {k: v["amplitude"] for k, v in out["metabolites"].items()}
    conc = q.concentrations(amps, out["water_amplitude"], frac, te, tr, p)
    assert conc["Cr"][1] == pytest.approx(10.0, abs=0.1)
    assert conc["Cr"][0] == pytest.approx(molal, rel=0.01)
    for other in ("NAA", "Glu", "Ins"):
        assert conc[other][1] < 0.1


def test_each_scan_is_quantified_with_its_own_te_and_tr():
    """The fit JSON records the scan's protocol (from its header); its rows use that TE and
    TR for the relaxation corrections, not the config's `sequence`."""
    p = q.QuantParams()
    frac = {"gm": 0.6, "wm": 0.3, "csf": 0.1}
    scan = {"participant_id": "sub-1", "group": "HC", "session": "ses-1", "drug": "none",
            "period": 1, "film": "neutral"}
    tissue = {"GM": 0.6, "WM": 0.3, "CSF": 0.1, "mrsflow": {"tissue_source": "default"}}
    qc = {"snr": 30.0, "linewidth_naa_hz": 7.0, "linewidth_water_hz": 8.0}
    rules = {"snr_min": 8, "linewidth_naa_max_hz": 12.8, "linewidth_water_max_hz": 15}
    amps = q.signal_amplitudes({"Glu": 10.0}, frac, 35.0, 3000.0, p, 1.0e4)
    fit = {"success": True, "metabolites": {"Glu": {"amplitude": amps["Glu"], "crlb_pct": 5}},
           "water_amplitude": 1.0e4,
           "extra": {"protocol": {"name": "te35", "te_ms": 35.0, "tr_ms": 3000.0}}}
    proto = fit["extra"]["protocol"]
    (row,) = q.scan_rows(scan, fit, tissue, qc, te_ms=proto["te_ms"], tr_ms=proto["tr_ms"],
                         params=p, rules=rules)
    assert row["conc_molal"] == pytest.approx(10.0, rel=1e-12)
    assert (row["protocol"], row["te_ms"], row["tr_ms"]) == ("te35", 35.0, 3000.0)
    assert row["tissue_source"] == "default"
    (wrong,) = q.scan_rows(scan, fit, tissue, qc, te_ms=30.0, tr_ms=2000.0, params=p,
                           rules=rules)
    assert abs(wrong["conc_molal"] / 10.0 - 1) > 0.01  # the TE/TR used matter


def test_fit_qc_excludes_only_material_structure_and_a_runaway_baseline():
    """A fit is excluded when its residual has structure that is both there (above what
    noise gives) and material (% of the tallest line), or its baseline took up
    metabolite-sized signal; each rule names its numbers, and a rule set to null is off."""
    rules = {"snr_min": 8, "linewidth_naa_max_hz": 12.8, "linewidth_water_max_hz": 15,
             "fit_residual_structure_max": 1.5, "fit_residual_max_pct": 5.0,
             "fit_baseline_excursion_max": 0.3}
    good = {"residual_structure": 1.0, "residual_max_pct": 1.2, "baseline_excursion": 0.05,
            "region_ppm": [1.8, 4.0]}
    assert q.fit_qc_reasons(good, rules) == []
    # high SNR: significant but immaterial structure is kept; large but noise-like too
    assert q.fit_qc_reasons({**good, "residual_structure": 6.0, "residual_max_pct": 3.0},
                            rules) == []
    assert q.fit_qc_reasons({**good, "residual_structure": 1.2, "residual_max_pct": 9.0},
                            rules) == []
    (why,) = q.fit_qc_reasons({**good, "residual_structure": 4.3, "residual_max_pct": 12.9},
                              rules)
    assert why == ("fit leaves structure in the residual (4.3 x noise > 1.5, largest 12.9 % "
                   "of the tallest line > 5.0 %, 1.8-4.0 ppm)")
    (why,) = q.fit_qc_reasons({**good, "baseline_excursion": 0.34}, rules)
    assert why == "fit baseline excursion 0.34 of the tallest line > 0.3"
    off = {**rules, "fit_residual_max_pct": None, "fit_baseline_excursion_max": None}
    assert q.fit_qc_reasons({**good, "residual_structure": 4.3, "residual_max_pct": 12.9,
                             "baseline_excursion": 0.34}, off) == []
    # the verdict of a scan carries them after the acquisition rules
    qc = {"snr": 30.0, "linewidth_naa_hz": 7.0, "linewidth_water_hz": 8.0}
    fit = {"success": True, "extra": {"fit_qc": {**good, "baseline_excursion": 0.34}}}
    assert q.qc_verdict(qc, fit, rules) == (
        False, "fit baseline excursion 0.34 of the tallest line > 0.3")
    assert q.qc_verdict(qc, {"success": True}, rules) == (True, "")
