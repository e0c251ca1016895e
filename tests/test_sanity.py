"""Physical sanity checks (mrsflow.sanity) inside preprocessing: no data, a mirrored spectrum,
a water reference that is not water, swapped files, a narrow spectral width, a water
reference of another length. Synthetic scans of known content, and the real Philips exports
of ../shared/reference (skipped where absent)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_preprocess import DT, F0, N, synth

from mrsflow import convert, fit, qc, sanity
from mrsflow import preprocess as P

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "osprey-philips-press"


def process(rows, wrows=None, mode="mc", dwell=DT, **params):
    return P.process_scan(rows, wrows, dwell, F0, mode, params)


@pytest.fixture(scope="module")
def mc_scan():
    return synth(11, n_transients=64, target_snr=30.0)


@pytest.fixture(scope="module")
def classic_scans():
    return [synth(seed, mode="classic", n_transients=32, target_snr=30.0) for seed in (21, 22)]


def test_data_problem_names_zero_and_non_finite_data():
    rows = np.ones((4, 16), complex)
    assert sanity.data_problem(rows) == ""
    assert "all-zero" in sanity.data_problem(np.zeros((4, 16), complex))
    rows[2, 5] = np.nan
    assert sanity.data_problem(rows) == "non-finite values (NaN/inf) in 1 of 4 transient(s)"


def test_unusable_scan_is_excluded_not_processed():
    res = process(np.zeros((64, N), complex))
    assert res.qc["usable"] is False and res.qc["snr"] is None
    assert res.qc["sanity"]["exclude"] == ["all-zero data (no signal was stored)"]
    assert res.metab.shape == (N,)  # every output still has its file


def test_a_good_scan_passes_every_check(mc_scan):
    res = process(mc_scan.transients)
    s = res.qc["sanity"]
    assert s["exclude"] == [] and s["notes"] == [] and not s["mirror"]["mirrored"]
    assert s["water_dominance"] > 100 and s["water_ratio"] > 20


def test_mirrored_scan_is_corrected_to_the_same_result(mc_scan):
    """A conjugated export (mirror image about 4.65 ppm) is detected from NAA/Cr/Cho at their
    mirror positions, conjugated back and processed: the result is the unmirrored scan's."""
    good = process(mc_scan.transients)
    res = process(np.conj(mc_scan.transients))
    s = res.qc["sanity"]
    assert s["mirror"]["before"]["mirrored"] and s["mirror"]["corrected"]
    assert s["notes"] == ["spectrum was mirrored (conjugated FID): corrected by conjugation"]
    assert s["exclude"] == []
    np.testing.assert_array_equal(res.metab, good.metab)
    assert res.qc["snr"] == good.qc["snr"]
    assert res.provenance[0][0] == "Conjugation"
    refused = process(np.conj(mc_scan.transients), mirrored="exclude")
    assert len(refused.qc["sanity"]["exclude"]) == 1
    assert refused.qc["sanity"]["exclude"][0].startswith("spectrum mirrored: NAA, Cr and Cho")


def test_pure_noise_is_never_called_mirrored():
    rng = np.random.default_rng(5)
    for _ in range(5):
        noise = rng.normal(size=(64, N)) + 1j * rng.normal(size=(64, N))
        assert not sanity.mirror_check(noise.mean(axis=0), DT, F0)["mirrored"]


def test_water_reference_checks_classic(classic_scans):
    a, b = classic_scans
    good = process(a.transients, a.water_ref, mode="classic")
    assert good.qc["sanity"]["exclude"] == []
    assert good.qc["sanity"]["water_dominance"] > 100
    # metabolite and water files swapped
    swapped = process(a.water_ref, a.transients, mode="classic")
    (reason,) = swapped.qc["sanity"]["exclude"]
    assert reason.startswith("metabolite and water files appear swapped")
    # the water column pointing at another water-suppressed scan
    other = process(a.transients, b.transients, mode="classic")
    reasons = other.qc["sanity"]["exclude"]
    assert reasons and all(r.startswith("the water reference is not water") for r in reasons)


def test_scan_that_is_not_metabolite_cycled(classic_scans):
    """Water-suppressed rows declared acq=mc: the pair differences cancel the metabolites,
    so the 'metabolite spectrum' is noise (SNR ~1, far below the QC minimum of 8: excluded
    for SNR), and where the residual water is small next to the metabolites the 'MC water'
    (pair sums) is not water either."""
    rows = classic_scans[0].transients
    res = process(rows, mode="mc")
    assert res.qc["snr"] < 2
    reasons = sanity.water_problems(5.0, 0.01, sanity.DEFAULTS, mode="mc")
    assert reasons == ["the MC water (sum of the cycle pair) is not water: its water line is "
                       "only 5 times the largest metabolite-region signal (< 20); is this scan "
                       "metabolite-cycled?"]
    assert sanity.water_problems(400.0, 0.3, sanity.DEFAULTS, mode="mc") == [
        "the MC water (sum of the cycle pair) is not water: its water line is only 3.33 "
        "times the metabolite scan's own water (< 4)"]


def test_water_reference_of_another_length(classic_scans):
    """A water reference with half the points: zero-filled to the metabolite scan's length,
    with a note; the processed spectra are those of the full-length reference."""
    a = classic_scans[0]
    full = process(a.transients, a.water_ref, mode="classic")
    short = process(a.transients, a.water_ref[:, : N // 2], mode="classic")
    assert short.qc["sanity"]["exclude"] == []
    assert short.qc["sanity"]["notes"] == [
        f"water reference has {N // 2} points, the metabolite scan {N}: zero-filled"]
    assert short.qc["water_points"] == N // 2 and short.water.shape == (N,)
    assert short.qc["water_peak_height"] == pytest.approx(full.qc["water_peak_height"],
                                                          rel=0.01)
    spec_full, ppm = qc.spectrum(full.metab, DT, F0)
    spec_short, _ = qc.spectrum(short.metab, DT, F0)
    sel = (ppm > 1.8) & (ppm < 4.2)
    assert np.corrcoef(spec_full.real[sel], spec_short.real[sel])[0, 1] > 0.999
    longer = process(a.transients, np.pad(a.water_ref, ((0, 0), (0, 512))), mode="classic")
    assert longer.qc["sanity"]["notes"][0].endswith("truncated")


def _lines_scan(dwell: float, seed: int = 1, n_pairs: int = 16) -> np.ndarray:
    """MC rows of water + NAA, Cr, Cho lines (no basis needed at any spectral width)."""
    t = np.arange(N) * dwell
    rng = np.random.default_rng(seed)

    def line(ppm, amp, lw=6.0):
        return amp * np.exp(2j * np.pi * (ppm - 4.65) * F0 * t - np.pi * lw * t)

    water = line(4.65, 2000.0, 8.0)
    metab = line(2.008, 3.0) + line(3.027, 1.5) + line(3.212, 1.2)
    rows = []
    for _ in range(n_pairs):
        for c in (1, -1):
            rows.append(water + c * metab + 0.3 * (rng.normal(size=N) + 1j * rng.normal(size=N)))
    return np.array(rows)


@pytest.mark.parametrize("bandwidth_hz", [1000.0, 1200.0, 1300.0, 2000.0, 4000.0])
def test_any_spectral_width_is_processed(bandwidth_hz):
    """Spectral widths at which the default noise windows do not fit (Siemens' 1200 Hz
    stopped preprocessing with 'no noise window inside the spectral width')."""
    dwell = 1.0 / bandwidth_hz
    res = process(_lines_scan(dwell), dwell=dwell)
    q = res.qc
    assert q["sanity"]["exclude"] == []
    assert math.isfinite(q["snr"]) and q["snr"] > 5
    assert q["linewidth_naa_hz"] == pytest.approx(6.0, rel=0.15)


def test_narrow_spectral_width_is_fitted():
    """1200 Hz data through the fitter (the basis resampled onto its time grid)."""
    from test_spectra import real_basis

    dwell = 1.0 / 1200.0
    res = process(_lines_scan(dwell), dwell=dwell)
    out = fit.fit_spectrum(res.metab, dwell, F0, real_basis())
    assert out.success and out.amplitude("NAA") > 0 and math.isfinite(out.fit_quality)


# ------------------------------------------------------------------- real Philips exports
PAIRS = [
    ("UnEdited/sub-01/ses-01/mrs/sub-01_ses-01_press/sub-01_PRESS_35_act.sdat",
     "UnEdited/sub-01/ses-01/mrs/sub-01_ses-01_press-ref/sub-01_PRESS_35_ref.sdat"),
    ("UnEdited/sub-02/ses-01/mrs/sub-02_ses-01_press/sub-02_PRESS_35_act.sdat",
     "UnEdited/sub-02/ses-01/mrs/sub-02_ses-01_press-ref/sub-02_PRESS_35_ref.sdat"),
    ("UnEdited_with_MM_data/sub-01/ses-01/mrs/sub-01_ses-01_press/"
     "sub-01_ses-01_PRESS_raw-act_noID.SDAT",
     "UnEdited_with_MM_data/sub-01/ses-01/mrs/sub-01_ses-01_press_ref/"
     "sub-01_ses-01_PRESS_raw-ref_noID.SDAT"),
]


@pytest.fixture(scope="module")
def real_scans(tmp_path_factory):
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent (the real Philips exports are not shipped)")
    out = tmp_path_factory.mktemp("real")
    scans = []
    for i, (act, ref) in enumerate(PAIRS):
        a = convert.convert_spectrum(REFERENCE / act, out / f"a{i}_svs.nii.gz", acq="ws")
        w = convert.convert_spectrum(REFERENCE / ref, out / f"w{i}_svs.nii.gz", acq="ws")
        rows, wrows, dwell, f0, *_ = P.read_inputs(a, w, "classic")
        scans.append((rows, wrows, dwell, f0))
    return scans


def test_real_exports_pass_and_their_damage_is_caught(real_scans):
    """The thresholds hold on real data with a wide margin (measured: water dominance
    309-360 against a minimum of 20, water ratio 37-314 against 4), and a conjugated or
    swapped real export is caught."""
    for rows, wrows, dwell, f0 in real_scans:
        good = P.process_scan(rows, wrows, dwell, f0, "classic")
        s = good.qc["sanity"]
        assert s["exclude"] == [] and s["notes"] == []
        assert s["water_dominance"] > 5 * sanity.DEFAULTS["water_dominance_min"]
        assert s["water_ratio"] > 5 * sanity.DEFAULTS["water_ratio_min"]
        mirrored = P.process_scan(np.conj(rows), np.conj(wrows), dwell, f0, "classic")
        assert mirrored.qc["sanity"]["notes"][0].startswith("spectrum was mirrored")
        np.testing.assert_array_equal(mirrored.metab, good.metab)
        swapped = P.process_scan(wrows, rows, dwell, f0, "classic")
        assert swapped.qc["sanity"]["exclude"][0].startswith(
            "metabolite and water files appear swapped")
