"""Report tables (mrsflow.report): MRSinMRS from headers, provenance, per-scan QC."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pandas as pd
import pytest

from mrsflow import nmrs, report
from mrsflow.errors import InputError

CONFIG = {
    "data": {"source": "twin", "raw_dir": "results/twin/raw"},
    "sequence": {"field_mhz": 127.8, "te1_ms": 12.0, "te2_ms": 18.0, "tr_ms": 2000.0,
                 "bandwidth_hz": 2000.0, "points": 512, "centre_ppm": 4.65},
    "basis": {"name": "b", "metabolites": ["Cr", "Glu", "NAA"], "macromolecules": ["MM09"]},
    "twin": {"voxel": {"mni_centre_mm": [-10.0, 12.0, -8.0], "jitter_mm": 1.5}},
    "segment": {"backend": "builtin"},
    "fitting": {"backend": "builtin", "ppm_range": [0.2, 4.2], "baseline": "poly, 2"},
    "quantify": {"water_content": {"gm": 0.78, "wm": 0.65, "csf": 0.97},
                 "water_t1_ms": {"gm": 1331.0, "wm": 832.0, "csf": 3817.0},
                 "water_t2_ms": {"gm": 110.0, "wm": 80.0, "csf": 503.0},
                 "metabolite_t1_ms": 1400.0, "metabolite_t2_ms": 160.0},
    "qc": {"snr_min": 8.0, "linewidth_naa_max_hz": 12.8, "linewidth_water_max_hz": 15.0},
}
HEADER = {
    "Manufacturer": "Philips", "SoftwareVersions": "5.6.1", "EchoTime": 0.03,
    "RepetitionTime": 2.0, "SpectralWidth": 2000.0, "ProtocolName": "WIP PRESS",
    "ConversionMethod": "spec2nii v0.8.15",
}


def _fake_scan(path, centre=(-5.0, 10.0, -1.0)):
    affine = np.diag([10.0, 12.0, 10.0, 1.0])
    affine[:3, 3] = centre
    data = np.zeros((1, 1, 1, 512, 2, 4), complex)
    data[0, 0, 0, 0] = 1.0
    return nmrs.write(path, data, 1 / 2000.0, 127.8, dim_tags=("DIM_METCYCLE", "DIM_DYN", None),
                      affine=affine, hdr_ext=dict(HEADER))


def _metabolites():
    rows = []
    for i, (snr, lw, ok) in enumerate([(30.0, 6.0, True), (40.0, 8.0, True),
                                       (5.0, 14.0, False)]):
        for met, crlb in (("Glu", 5.0 + i), ("NAA", 2.0)):
            rows.append({"participant_id": f"sub-{i}", "session": "ses-1", "film": "neutral",
                         "metabolite": met, "crlb_pct": crlb, "snr": snr,
                         "linewidth_naa_hz": lw, "linewidth_water_hz": lw + 1,
                         "qc_pass": ok, "qc_reason": "" if ok else "SNR 5 < 8"})
    return pd.DataFrame(rows)


def test_mrsinmrs_table_from_nifti_mrs_headers(tmp_path):
    paths = [_fake_scan(tmp_path / "a_svs.nii.gz"),
             _fake_scan(tmp_path / "b_svs.nii.gz", centre=(-7.0, 12.0, -3.0))]
    headers = report.read_headers(paths)
    assert headers[0]["hdr"]["Manufacturer"] == "Philips"
    exclusions = pd.DataFrame([{"participant_id": "sub-2", "session": "ses-1",
                                "film": "neutral", "reason": "SNR 5 < 8"}])
    basis = {"meta": {"SimVersion": "mrsflow.basis 0.1.0"},
             "seq": {"sequence": "press", "TE": 30.0, "f0_MHz": 127.8, "pulses": "ideal"}}
    qc = [{"mode": "mc", "n_rejected": n, "alignment": {"applied": True, "method": "SR"},
           "ecc": {"applied": True}, "hlsvd": {"applied": False},
           "params": {"z_thresh": 3.5}, "referencing": {"reference": "water"}}
          for n in (2, 4)]
    fits = [{"backend": "builtin", "backend_version": "0.1.0", "fit_quality": q}
            for q in (1.0, 1.2)]
    t = report.mrsinmrs_table(headers, CONFIG, qc=qc, fits=fits, metabolites=_metabolites(),
                              exclusions=exclusions, basis_meta=basis,
                              reporting={"voi_location": "left nucleus accumbens"},
                              versions={"mrsflow": "0.1.0", "snakemake": "9.0"})
    assert list(t.columns) == report.MRSINMRS_COLUMNS
    assert t.section.unique().tolist() == list(report.SECTIONS.values())
    v = dict(zip(t["item"], t["value"], strict=True))
    assert v["Field strength [T]"] == "3 T (127.8 MHz)"
    assert v["Manufacturer"] == "Philips"
    assert v["Software version"] == "5.6.1"
    assert v["Model"].startswith("n/a")
    assert v["Pulse sequence"].startswith("PRESS (scanner protocol: WIP PRESS")
    assert v["Nominal VOI size"] == "10 x 12 x 10 mm (1.20 mL)"
    loc = v["Volume of interest location"]
    assert loc.startswith("left nucleus accumbens") and "-6.0 ± 1.4" in loc
    assert "MNI (-10.0, 12.0, -8.0)" in loc
    assert v["Echo time (TE)"] == "30 ms (config protocols: b 30 ms)"
    assert v["Repetition time (TR)"] == "2000 ms (config protocols: b 2000 ms)"
    assert v["Number of transients (averages) per spectrum"] == "8 (DIM_METCYCLE 2 x DIM_DYN 4)"
    assert v["Spectral width"] == "2000 Hz"
    assert v["Spectral points"] == "512"
    assert "metabolite cycling" in v["Water suppression"]
    assert v["Shimming method, reference peak and thresholds"].startswith("n/a")
    assert "spec2nii v0.8.15" in v["Analysis software"]
    assert "builtin 0.1.0" in v["Analysis software"]
    assert "HLSVD residual-water removal in 0/2" in v["Processing steps"]
    assert "rejected transients per scan 3 ± 1.41" in v["Processing steps"]
    assert "3 simulated metabolite basis spectra + 1" in v["Fitting model and basis set"]
    assert "0.78/0.65/0.97 (GM/WM/CSF)" in v["Quantification references and assumptions"]
    assert v["SNR (NAA height / noise SD)"].startswith("all scans: 25 ± 18")
    assert "QC-passed: 35 ± 7.07" in v["SNR (NAA height / noise SD)"]
    assert "QC-passed: 17.5 ± 3.54" in v["SNR, LCModel definition (= SNR / 2)"]
    assert "QC-passed: 7 ± 1.41 Hz" in v["Linewidth, NAA FWHM"]
    assert "excluded 1 of 2 spectra (sub-2 ses-1 neutral: SNR 5 < 8)" in v[
        "Data exclusion criteria"]
    assert v["Quality of the model fit"].startswith("Glu CRLB 6 ± 1 %")


def test_provenance_checksums_equal_hashlib_and_output_is_deterministic(tmp_path):
    raw = tmp_path / "raw"
    (raw / "phenotype").mkdir(parents=True)
    (raw / "sub-a" / "ses-1" / "mrs").mkdir(parents=True)
    (raw / "sub-b").mkdir()
    files = {
        "participants.tsv": b"participant_id\tgroup\nsub-a\tHC\n",
        "phenotype/craving.tsv": b"x\n",
        "sub-a/ses-1/mrs/x.SDAT": bytes(range(256)) * 100,
        "sub-a/ses-1/mrs/x.SPAR": b"samples : 2048\n",
        "sub-b/t1.dcm": b"DICM",
    }
    for rel, content in files.items():
        (raw / rel).write_bytes(content)
    (tmp_path / "elsewhere.txt").write_text("not raw")
    paths = [raw / "participants.tsv", raw / "sub-a", raw / "sub-b"]
    sums = report.raw_checksums(raw, paths)
    assert list(sums) == sorted(files)
    for rel, content in files.items():
        assert sums[rel] == hashlib.sha256(content).hexdigest()
        assert sums[rel] == hashlib.sha256((raw / rel).read_bytes()).hexdigest()

    outs = []
    for k in range(2):
        tsv, yml = tmp_path / f"p{k}.tsv", tmp_path / f"p{k}.yaml"
        prov = report.run_provenance({"b": {"y": 2, "x": [1, 2]}, "a": "z"}, raw, paths,
                                     tmp_path, tsv, yml, snakemake_version="9.9.9")
        outs.append((tsv.read_bytes(), yml.read_bytes()))
    assert outs[0] == outs[1]
    assert prov["software"]["snakemake"] == "9.9.9"
    assert prov["workflow"]["git_commit"].startswith("n/a")  # tmp_path is no git checkout
    rows = pd.read_csv(tmp_path / "p0.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    assert rows.kind.unique().tolist() == ["software", "workflow", "config", "raw", "sha256"]
    cfg = rows[rows.kind == "config"]
    assert cfg.name.tolist() == ["a", "b.x", "b.y"]
    assert rows[rows.kind == "sha256"].set_index("name").value.to_dict() == sums
    for pkg in ("python", "numpy", "pandas", "nibabel", "mrsflow", "dcm2niix (binary)"):
        assert pkg in prov["software"]


def test_mrsinmrs_per_protocol_averages_from_raw_headers_and_region_from_config(tmp_path):
    """Two protocols in one study: TE per scan from the headers, each protocol's TE1/TE2
    split, averages from the raw export's header (a pre-averaged SDAT says 64, not 1), the
    region label from config report.voi_location."""
    paths = [_fake_scan(tmp_path / "a_svs.nii.gz"), _fake_scan(tmp_path / "b_svs.nii.gz")]
    headers = report.read_headers(paths)
    headers[1]["hdr"]["EchoTime"] = 0.035
    cfg = {**CONFIG, "report": {"voi_location": "posterior cingulate cortex"},
           "protocols": {"te35": {**CONFIG["sequence"], "te2_ms": 23.0}}}
    fits = [{"backend": "builtin", "backend_version": "0.1.0", "fit_quality": 1.0,
             "extra": {"protocol": {"name": name, "averages": n}}}
            for name, n in (("b", 64), ("te35", 48))]
    t = report.mrsinmrs_table(headers, cfg, fits=fits, metabolites=_metabolites(),
                              reporting={"voi_location": "left nucleus accumbens"})
    v = dict(zip(t["item"], t["value"], strict=True))
    assert v["Echo time (TE)"] == ("30 ms (1 scan); 35 ms (1 scan) (config protocols: b 30 ms, "
                                   "te35 35 ms)")
    assert "b: TE1/TE2 12/18 ms; te35: TE1/TE2 12/23 ms" in v["Pulse sequence"]
    assert v["Number of transients (averages) per spectrum"] == (
        "64 (raw header) (1 scan); 48 (raw header) (1 scan)")
    assert v["Volume of interest location"].startswith("posterior cingulate cortex;")


def test_raw_files_missing_path_is_an_error(tmp_path):
    with pytest.raises(InputError, match="raw input not found"):
        report.raw_files(tmp_path, [tmp_path / "sub-x"])


def test_qc_scans_table_one_row_per_scan():
    scans = pd.DataFrame([{"participant_id": f"sub-{i}", "session": "ses-1",
                           "film": "neutral", "group": "HC", "drug": "none", "acq": "mc"}
                          for i in range(4)])
    qc = [{"snr": s, "linewidth_naa_hz": 7.0, "linewidth_water_hz": 8.0, "n_transients": 128,
           "n_rejected": 2, "alignment": {"freq_spread_rms_hz": 0.5}} for s in (30, 40, 5, 4)]
    fits = [{"backend": "builtin", "success": True, "fit_quality": 1.1}] * 4
    tissue = [{"GM": 0.5, "WM": 0.4, "CSF": 0.1}] * 4
    t = report.qc_scans_table(scans, qc, fits, tissue, _metabolites(), CONFIG["qc"])
    assert list(t.columns) == report.QC_SCAN_COLUMNS
    assert len(t) == 4
    assert t.snr_lcmodel.tolist() == [15, 20, 2.5, 2]
    assert t.glu_crlb_pct.tolist()[:3] == [5.0, 6.0, 7.0]
    assert t.qc_pass.tolist() == [True, True, False, False]  # last: recomputed verdict
    assert t.qc_reason.iloc[2] == "SNR 5 < 8"
    assert t.qc_reason.iloc[3].startswith("SNR 4 < 8")
    assert t.f_gm.tolist() == [0.5] * 4


def test_raw_inputs_participant_folders_and_outside_files(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub-a" / "mrs").mkdir(parents=True)
    (raw / "elsewhere").mkdir()
    for rel in ("sub-a/mrs/x.SDAT", "sub-a/mrs/x.SPAR", "elsewhere/y.SDAT", "elsewhere/y.SPAR"):
        (raw / rel).write_bytes(b"x")
    scans = pd.DataFrame({"mrs": ["sub-a/mrs/x.SDAT", "elsewhere/y.SDAT"], "water": ["", ""],
                          "t1w": ["sub-a/anat", "sub-a/anat"]})
    # checksummed: the participant folders plus listed files outside them
    got = report.raw_roots(raw, ["sub-a", "sub-b"], scans, twin=False)
    assert got == [f"{raw}/sub-a", f"{raw}/elsewhere/y.SDAT", f"{raw}/elsewhere/y.SPAR"]
    # DAG inputs for real data: the listed raw files only, never a participant folder
    got = report.raw_inputs(raw, ["sub-a", "sub-b"], scans, twin=False)
    assert got == [f"{raw}/elsewhere/y.SDAT", f"{raw}/elsewhere/y.SPAR", f"{raw}/sub-a/anat",
                   f"{raw}/sub-a/mrs/x.SDAT", f"{raw}/sub-a/mrs/x.SPAR"]
    for fn in (report.raw_inputs, report.raw_roots):
        assert fn("results/twin/raw/", ["sub-a", "sub-b"], scans, twin=True) == [
            "results/twin/raw/sub-a", "results/twin/raw/sub-b"]
