"""Linewidth matching between the scans of a session (mrsflow.linewidth) and the twin's
BOLD-like linewidth change (twin.effects.film_linewidth_hz)."""

import json
import math

import numpy as np
import pytest

from mrsflow import linewidth as L
from mrsflow import nmrs, qc
from mrsflow.errors import InputError
from mrsflow.twin import spectra

F0, DW, N = 127.8, 5e-4, 2048
T = np.arange(N) * DW


def _line(ppm, fwhm_lor, fwhm_gau=3.0, amp=1.0):
    nu = (ppm - 4.65) * F0
    return amp * np.exp(2j * np.pi * nu * T - np.pi * fwhm_lor * T
                        - (np.pi * fwhm_gau * T) ** 2 / (4 * math.log(2)))


def _scan(lor):
    """Water and a metabolite spectrum (NAA, Cr singlets) sharing one lineshape."""
    metab = _line(2.008, lor, amp=3.0) + _line(3.027, lor, amp=2.5)
    water = _line(4.65, lor, amp=2000.0)
    return {"metab": metab, "water": water}


def test_broadening_keeps_areas_and_widens_a_lorentzian_by_its_width():
    fid = _line(2.008, 4.0, fwhm_gau=0.0)
    for kind in L.KINDS:
        out = L.broaden(fid, DW, 1.5, kind)
        assert out[0] == fid[0]  # every line's area is the FID's first point
    before = qc.linewidth_hz(fid, DW, F0)
    after = qc.linewidth_hz(L.broaden(fid, DW, 1.5, "lorentzian"), DW, F0)
    assert after - before == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize("measure", ["water", "naa", "cr"])
def test_a_session_is_matched_to_its_broadest_scan(measure):
    p = L.settings({"enabled": True, "measure": measure})
    scans = [_scan(3.0), _scan(2.4), _scan(2.9)]  # the second narrowed like BOLD would
    out = L.match_session(scans, DW, F0, p)
    target = out[0]["before_hz"]
    assert [r["target_hz"] for r in out] == [target] * 3
    assert out[0]["broadening_hz"] == 0.0 and out[0]["metab"] is scans[0]["metab"]
    assert out[1]["broadening_hz"] == pytest.approx(0.6, abs=0.08)  # Lorentzian: the gap
    assert out[2]["broadening_hz"] == pytest.approx(0.1, abs=0.06)
    for r in out:
        assert r["after_hz"] == pytest.approx(target, abs=0.03)
        # the water and the metabolites broadened alike: the other measure matches too
        other = "naa" if measure == "water" else "water"
        assert L.measure_hz(r["metab"], r["water"], DW, F0, other) == pytest.approx(
            L.measure_hz(out[0]["metab"], out[0]["water"], DW, F0, other), abs=0.05)


def test_settings_are_checked_and_a_lone_scan_is_left_alone():
    with pytest.raises(InputError, match="measure"):
        L.settings({"measure": "glu"})
    with pytest.raises(InputError, match="unknown keys"):
        L.settings({"target": "max"})
    p = L.settings({"enabled": True})
    (r,) = L.match_session([_scan(3.0)], DW, F0, p)
    assert r["broadening_hz"] == 0.0 and "fewer than two" in r["note"]
    far = L.match_session([_scan(9.0), _scan(2.0)], DW, F0,
                          L.settings({"enabled": True, "max_broadening_hz": 2.0}))
    assert far[1]["broadening_hz"] == 0.0 and "does not reach" in far[1]["note"]
    assert far[1]["metab"] is not None


def test_a_scan_beyond_the_qc_linewidth_limit_sets_no_target():
    """A scan QC will exclude for its linewidth neither sets the session's target nor is
    broadened; the others are matched among themselves."""
    p = L.settings({"enabled": True, "measure": "naa"})
    scans = [_scan(2.0), _scan(2.5), _scan(12.0)]
    wide = L.measure_hz(scans[2]["metab"], None, DW, F0, "naa")
    out = L.match_session(scans, DW, F0, {**p, "max_linewidth_hz": wide - 1.0})
    assert out[0]["target_hz"] == pytest.approx(out[1]["before_hz"])
    assert out[2]["broadening_hz"] == 0.0 and "above max_linewidth_hz" in out[2]["note"]
    assert out[0]["after_hz"] == pytest.approx(out[1]["before_hz"], abs=0.03)


def test_run_participant_writes_matched_spectra_and_records(tmp_path):
    plan = []
    for ses, widths in (("ses-1", (3.0, 2.5)), ("ses-2", (2.6, 2.6))):
        for film, lor in zip(("neutral", "cocaine"), widths, strict=True):
            s = _scan(lor)
            stem = tmp_path / "pre" / f"{ses}_{film}"
            paths = {}
            for key in ("metab", "water"):
                paths[key] = nmrs.write(f"{stem}_{key}.nii.gz", s[key].reshape(1, 1, 1, N), DW,
                                        F0)
            out = tmp_path / "lw" / f"{ses}_{film}"
            plan.append({"session": ses, "metab": str(paths["metab"]),
                         "water": str(paths["water"]), "metab_out": f"{out}_metab.nii.gz",
                         "water_out": f"{out}_water.nii.gz", "record": f"{out}.json"})
    raw = {p["metab"]: (tmp_path / p["metab"]).read_bytes() for p in plan}
    recs = L.run_participant(plan, {"enabled": True})
    assert [r["session"] for r in recs] == ["ses-1", "ses-1", "ses-2", "ses-2"]
    assert recs[1]["broadening_hz"] == pytest.approx(0.5, abs=0.08)
    assert recs[2]["broadening_hz"] == recs[3]["broadening_hz"] == 0.0  # already equal
    rec = json.loads(open(plan[1]["record"]).read())
    assert rec["enabled"] is True and rec["measure"] == "water"
    matched = nmrs.read(plan[1]["metab_out"])[0].reshape(-1)
    assert qc.linewidth_hz(matched, DW, F0) == pytest.approx(
        qc.linewidth_hz(_scan(3.0)["metab"], DW, F0), abs=0.05)
    assert all((tmp_path / k).read_bytes() == v for k, v in raw.items())  # inputs untouched
    off = L.run_participant(plan, {"enabled": False})
    assert all(r["broadening_hz"] == 0.0 and r["after_hz"] == r["before_hz"] for r in off)


def test_the_twins_bold_change_narrows_water_and_metabolites_alike():
    """film_linewidth_hz acts as a T2* change on the whole scan, after the scan's linewidth
    at rest is set: water and NAA both narrow."""
    basis = spectra.toy_basis()
    amps = {"NAA": 10.0, "Cr": 8.0, "Cho": 2.0}
    out = {}
    for bold in (0.0, -0.5):
        spec = spectra.ScanSpec(mode="classic", n_transients=8, target_snr=200.0,
                                target_linewidth_hz=6.0, bold_linewidth_hz=bold, n_motion=0)
        s = spectra.synthesize_scan(basis, amps, 5000.0, spec, np.random.default_rng(3))
        out[bold] = (qc.linewidth_hz(s.ideal_metab, DW, F0),
                     qc.linewidth_hz(s.ideal_water, DW, F0, peak_ppm=qc.WATER_PPM),
                     s.linewidth_planted_hz)
    assert out[0.0][0] == pytest.approx(6.0, abs=0.01)
    # a Lorentzian change of 0.5 Hz moves a mostly Gaussian line's FWHM by less (Voigt)
    assert -0.5 < out[-0.5][0] - out[0.0][0] < -0.25
    assert -0.5 < out[-0.5][1] - out[0.0][1] < -0.25
    assert out[-0.5][2] == pytest.approx(out[-0.5][0], abs=1e-6)  # the truth says so
