"""Tests for mrsflow.vendor: VAX F-floats, voxel geometry, SPAR/SDAT and RDA writers.

The references are spec2nii 0.8.15's own readers (``spec2nii.Philips.philips``,
``spec2nii.nifti_orientation``, ``spec2nii.GSL.gslfunctions``), imported in-process.
End-to-end conversions through the spec2nii CLI are in ``test_convert.py``.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from spec2nii.GSL.gslfunctions import calc_prs
from spec2nii.nifti_orientation import calc_affine
from spec2nii.Philips import philips as s2n_philips

from mrsflow.vendor import (
    SPAR_REQUIRED_KEYS,
    VoxelGeometry,
    read_rda_header,
    read_sdat,
    read_spar,
    siemens_inplane_rotation,
    siemens_prs_vectors,
    validate_spar,
    vax_f_decode,
    vax_f_encode,
    write_philips,
    write_rda,
)

F0 = 127.8  # MHz
BW = 2000.0  # Hz


def _fid(n: int = 256, bw: float = BW, f0: float = F0, peaks=((2.01, 3.0), (4.65, 10.0))):
    t = np.arange(n) / bw
    out = np.zeros(n, complex)
    for ppm, amp in peaks:
        out += amp * np.exp(2j * np.pi * (ppm - 4.65) * f0 * t - t / 0.08)
    return out


GEOM = VoxelGeometry((12.5, -18.0, 7.25), (15.0, 10.0, 20.0), (5.0, -12.0, 20.0))


# ----------------------------------------------------------------------------- VAX F
@pytest.mark.parametrize(
    ("value", "raw"),
    [
        (1.0, b"\x80\x40\x00\x00"),  # 0.5 * 2^1: exponent 129, fraction 0
        (-1.0, b"\x80\xc0\x00\x00"),
        (0.5, b"\x00\x40\x00\x00"),
        (0.0, b"\x00\x00\x00\x00"),
        (-0.0, b"\x00\x00\x00\x00"),  # VAX has no -0 (sign+zero exponent is reserved)
        (0.75, b"\x40\x40\x00\x00"),  # 0.11b * 2^0
    ],
)
def test_vax_known_bit_patterns(value, raw):
    assert vax_f_encode([value]) == raw
    assert vax_f_decode(raw)[0] == value
    assert s2n_philips._vax_to_ieee_single_float(raw) == [value]


def test_vax_round_trip_matches_spec2nii_decoder():
    rng = np.random.default_rng(0)
    mags = 10.0 ** rng.uniform(-37, 37, 3000)
    vals = (rng.choice([-1.0, 1.0], mags.size) * mags).astype(np.float32)
    special = np.array(
        [0.0, 1.0, -1.0, 2.0**-128, -(2.0**-128), 2.0**-127, 1.17549435e-38, 1e-38,
         1.7e38, -1.7e38, 123456.789, -3.5e-20, np.float32(np.pi)],
        dtype=np.float32,
    )
    vals = np.concatenate([vals, special])
    raw = vax_f_encode(vals)
    assert len(raw) == 4 * vals.size
    ours = vax_f_decode(raw)
    np.testing.assert_array_equal(ours, vals.astype(np.float64))  # exact
    theirs = np.array(s2n_philips._vax_to_ieee_single_float(raw))
    np.testing.assert_array_equal(theirs, vals.astype(np.float64))


def test_vax_is_ieee_times_four_word_swapped():
    # independent check of the layout: for normal numbers, swapping the two 16-bit
    # words of a VAX F gives the IEEE single whose value is 4x the VAX value
    vals = np.array([1.0, -2.5, 3.0e-5, 6.02e23, -1.0e-30], dtype=np.float32)
    raw = vax_f_encode(vals)
    for i, v in enumerate(vals):
        w0, w1 = struct.unpack("<HH", raw[4 * i : 4 * i + 4])
        ieee = struct.unpack("<f", struct.pack("<HH", w1, w0))[0]
        assert ieee == pytest.approx(4.0 * float(v), rel=0)


def test_vax_underflow_overflow_and_invalid():
    # below VAX's smallest normal (2^-128) flushes to zero
    assert vax_f_decode(vax_f_encode([2.0**-130]))[0] == 0.0
    with pytest.raises(ValueError, match="VAX F-float range"):
        vax_f_encode([3.0e38])
    with pytest.raises(ValueError, match="NaN or infinity"):
        vax_f_encode([1.0, np.nan])
    with pytest.raises(ValueError, match="real values"):
        vax_f_encode([1 + 1j])
    with pytest.raises(ValueError, match="multiple of 4"):
        vax_f_decode(b"\x00\x00\x00")
    # reserved operand: sign bit set, exponent 0
    assert np.isnan(vax_f_decode(b"\x00\x80\x00\x00")[0])


# ----------------------------------------------------------------------------- geometry
def test_geometry_affine_matches_spec2nii_calc_affine():
    rng = np.random.default_rng(3)
    for _ in range(20):
        centre = rng.uniform(-50, 50, 3)
        size = rng.uniform(8, 20, 3)
        ang = rng.uniform(-30, 30, 3)
        g = VoxelGeometry(centre, size, ang)
        ap, lr, cc = g.angulation_deg
        # what spec2nii.Philips.philips._philips_orientation computes from the SPAR
        lr_off, ap_off, cc_off = -centre[0], -centre[1], centre[2]  # SPAR (LPS) values
        ref = calc_affine(
            [-lr, -ap, cc], [g.lr_size, g.ap_size, g.cc_size], [-lr_off, -ap_off, cc_off]
        )
        np.testing.assert_allclose(g.affine(), ref, atol=1e-9)
        # centre, edge lengths, orthogonality
        np.testing.assert_allclose(g.affine() @ [0, 0, 0, 1], [*centre, 1], atol=1e-12)
        edges = g.edge_vectors_ras()
        np.testing.assert_allclose(np.linalg.norm(edges, axis=0),
                                   [g.lr_size, g.ap_size, g.cc_size], rtol=1e-12)
        # in LPS this is the intrinsic x-y-z rotation by the Philips angulations
        lps = Rotation.from_euler("XYZ", [lr, ap, cc], degrees=True).as_matrix()
        np.testing.assert_allclose(g.rotation_lps(), lps, atol=1e-12)
        # decomposition round trip
        back = VoxelGeometry.from_rotation(centre, size, g.rotation_ras())
        np.testing.assert_allclose(back.angulation_deg, g.angulation_deg, atol=1e-9)


def test_geometry_zero_angulation_axes():
    g = VoxelGeometry((1, 2, 3), (20, 10, 15))  # AP=20, LR=10, CC=15
    np.testing.assert_allclose(
        g.affine(), [[10, 0, 0, 1], [0, 20, 0, 2], [0, 0, 15, 3], [0, 0, 0, 1]]
    )
    assert g.centre_lps_mm == (-1.0, -2.0, 3.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"centre_ras_mm": (0, 0), "size_mm": (1, 1, 1)},
        {"centre_ras_mm": (0, 0, np.nan), "size_mm": (1, 1, 1)},
        {"centre_ras_mm": (0, 0, 0), "size_mm": (1, 0, 1)},
        {"centre_ras_mm": (0, 0, 0), "size_mm": (1, 1, 1), "angulation_deg": "abc"},
    ],
)
def test_geometry_validation(kwargs):
    with pytest.raises(ValueError, match="VoxelGeometry"):
        VoxelGeometry(**kwargs)


def test_geometry_from_rotation_rejects_non_rotation():
    with pytest.raises(ValueError, match="proper rotation"):
        VoxelGeometry.from_rotation((0, 0, 0), (1, 1, 1), np.diag([1.0, 1.0, -1.0]))


# ----------------------------------------------------------------------------- Philips
def test_write_philips_spar_and_sdat(tmp_path):
    fids = np.stack([_fid() * (1 + 0.1 * r) * np.exp(0.2j * r) for r in range(4)])
    spar, sdat = write_philips(
        tmp_path / "sub-01_svs", fids, f0_mhz=F0, bandwidth_hz=BW, te_ms=30, tr_ms=2000,
        geometry=GEOM, n_averages_per_row=1, extra={"scan_id": "12345", "patient_name": "anon"},
    )
    assert spar.name == "sub-01_svs.SPAR" and sdat.name == "sub-01_svs.SDAT"
    ours = read_spar(spar)
    validate_spar(ours, spar)
    assert ours["samples"] == 256 and ours["rows"] == 4
    assert ours["synthesizer_frequency"] == 127_800_000
    assert ours["sample_frequency"] == 2000
    assert ours["dim1_step"] == pytest.approx(BW / 256)
    assert ours["averages"] == 1 and ours["echo_time"] == 30
    assert ours["lr_off_center"] == -12.5 and ours["ap_off_center"] == 18.0
    assert ours["cc_off_center"] == 7.25
    assert (ours["ap_size"], ours["lr_size"], ours["cc_size"]) == (15, 10, 20)
    assert (ours["ap_angulation"], ours["lr_angulation"], ours["cc_angulation"]) == (5, -12, 20)
    assert ours["volume_selection_enable"] == "yes"
    assert ours["scan_id"] == "12345"  # written quoted: stays a string for spec2nii too

    # spec2nii's own SPAR parser agrees on everything it needs
    theirs = s2n_philips.read_spar(spar)
    for key in SPAR_REQUIRED_KEYS:
        assert theirs[key] == ours[key], key
    assert isinstance(theirs["scan_id"], str)

    # SDAT holds the project convention unconjugated (as Philips does), float32 precision
    stored = read_sdat(sdat, 256, 4)
    np.testing.assert_allclose(stored, fids, rtol=0, atol=1e-6 * np.abs(fids).max())
    assert sdat.stat().st_size == 4 * 256 * 8
    theirs_data = s2n_philips.read_sdat(sdat, 256, 4)  # (samples, rows)
    np.testing.assert_array_equal(theirs_data.T, stored.astype(np.complex64))


def test_write_philips_single_row_and_validation(tmp_path):
    kw = dict(f0_mhz=F0, bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
              n_averages_per_row=64)
    spar, sdat = write_philips(tmp_path / "a", _fid()[None, :], **kw)
    assert read_spar(spar)["averages"] == 64
    np.testing.assert_allclose(read_sdat(sdat, 256, 1)[0], _fid(), atol=1e-5)

    with pytest.raises(ValueError, match=r"shape \(n_rows, n_points\)"):
        write_philips(tmp_path / "b", _fid(), **kw)
    bad = _fid()[None, :].copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_philips(tmp_path / "b", bad, **kw)
    with pytest.raises(ValueError, match="all zero"):
        write_philips(tmp_path / "b", np.zeros((2, 256), complex), **kw)
    with pytest.raises(ValueError, match="override"):
        write_philips(tmp_path / "b", _fid()[None, :], **kw, extra={"samples": 12})
    with pytest.raises(ValueError, match="f0_mhz"):
        write_philips(tmp_path / "b", _fid()[None, :], **{**kw, "f0_mhz": -1})
    with pytest.raises(ValueError, match="n_averages_per_row"):
        write_philips(tmp_path / "b", _fid()[None, :], **{**kw, "n_averages_per_row": 0})
    with pytest.raises(ValueError, match="VoxelGeometry"):
        write_philips(tmp_path / "b", _fid()[None, :], **{**kw, "geometry": (0, 0, 0)})
    assert not (tmp_path / "b.SPAR").exists()


def test_read_spar_tolerant_and_errors(tmp_path):
    p = tmp_path / "x.SPAR"
    p.write_bytes(b'! comment\r\n\r\n   \r\nsamples : 2048\r\nscan_id: "WIP"\r\n'
                  b"dim1_step : 9.765625E-01\r\nempty :\r\nsamples : 2048\r\n")
    assert read_spar(p) == {"samples": 2048, "scan_id": "WIP", "dim1_step": 0.9765625,
                            "empty": None}
    p.write_text("samples : 2048\nthis line is broken\n")
    with pytest.raises(ValueError, match=r"x\.SPAR: line 2"):
        read_spar(p)
    p.write_text("samples : 2048\n : 5\n")
    with pytest.raises(ValueError, match="empty key"):
        read_spar(p)
    p.write_text("samples : 2048\nsamples : 1024\n")
    with pytest.raises(ValueError, match="'samples' repeated"):
        read_spar(p)
    p.write_text("! only comments\n")
    with pytest.raises(ValueError, match=r"x\.SPAR: no 'key : value'"):
        read_spar(p)


def test_validate_spar_names_missing_and_bad_keys(tmp_path):
    spar, _ = write_philips(tmp_path / "a", _fid()[None, :], f0_mhz=F0, bandwidth_hz=BW,
                            te_ms=30, tr_ms=2000, geometry=GEOM, n_averages_per_row=1)
    params = read_spar(spar)
    del params["samples"]
    del params["lr_angulation"]
    with pytest.raises(ValueError, match=r"a\.SPAR: SPAR is missing.*samples.*lr_angulation"):
        validate_spar(params, spar)
    params = read_spar(spar) | {"rows": "many"}
    with pytest.raises(ValueError, match="rows='many'"):
        validate_spar(params, spar)


def test_read_sdat_size_mismatch(tmp_path):
    _, sdat = write_philips(tmp_path / "a", _fid()[None, :], f0_mhz=F0, bandwidth_hz=BW,
                            te_ms=30, tr_ms=2000, geometry=GEOM, n_averages_per_row=1)
    with pytest.raises(ValueError, match=r"a\.SDAT: SDAT has 2048 bytes, expected 4096"):
        read_sdat(sdat, 256, 2)


# ----------------------------------------------------------------------------- RDA
def test_write_rda_header_and_data(tmp_path):
    fid = _fid(512, bw=2500.0, f0=123.2)
    path = write_rda(tmp_path / "svs.rda", fid, f0_mhz=123.2, bandwidth_hz=2500.0,
                     te_ms=30, tr_ms=2000, geometry=GEOM, n_averages=64,
                     extra={"ProtocolName": "svs_se_30_nacc"})
    raw = path.read_bytes()
    assert raw.startswith(b">>> Begin of header <<<\r\n")
    hdr, offset = read_rda_header(path)
    end_marker = b">>> End of header <<<\r\n"
    assert raw[offset - len(end_marker) : offset] == end_marker
    assert hdr["VectorSize"] == "512" and float(hdr["DwellTime"]) == 400.0
    assert float(hdr["MRFrequency"]) == 123.2 and hdr["Nucleus"] == "1H"
    assert float(hdr["NumberOfAverages"]) == 64 and hdr["ProtocolName"] == "svs_se_30_nacc"
    assert [float(hdr[f"VOIPosition{a}"]) for a in ("Sag", "Cor", "Tra")] == [-12.5, 18.0, 7.25]
    assert float(hdr["VOIReadoutFOV"]) == GEOM.lr_size == float(hdr["PixelSpacingCol"])
    assert float(hdr["VOIPhaseFOV"]) == GEOM.ap_size == float(hdr["PixelSpacingRow"])
    assert float(hdr["VOIThickness"]) == GEOM.cc_size == float(hdr["SliceThickness"])
    # data: little-endian complex double in the NIfTI-MRS convention = conj(project)
    data = np.frombuffer(raw[offset:], dtype="<f8")
    np.testing.assert_array_equal(data[0::2] + 1j * data[1::2], np.conj(fid))
    # the Siemens slice normal / in-plane rotation reproduce row/column vectors
    # through spec2nii's port of Siemens' fGSLCalcPRS
    normal = np.array([float(hdr[f"VOINormal{a}"]) for a in ("Sag", "Cor", "Tra")])
    gp, gr = calc_prs(normal, float(hdr["VOIRotationInPlane"]), False)
    col = np.array([float(hdr[f"ColumnVector[{i}]"]) for i in range(3)])
    row = np.array([float(hdr[f"RowVector[{i}]"]) for i in range(3)])
    np.testing.assert_allclose(gp, col, atol=1e-5)
    np.testing.assert_allclose(gr, row, atol=1e-5)


def test_siemens_prs_matches_spec2nii_gsl():
    rng = np.random.default_rng(7)
    normals = [np.array(v, float) for v in ((0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1),
                                            (1, 1, 0), (0.3, -0.9, 0.3), (-0.7, 0.2, 0.1))]
    normals += list(rng.normal(size=(10, 3)))
    for n in normals:
        n = n / np.linalg.norm(n)
        for phi in (0.0, 0.4, -2.0, np.pi):
            gp, gr = siemens_prs_vectors(n, phi)
            rp, rr = calc_prs(n, phi, False)
            np.testing.assert_allclose(gp, rp, atol=1e-12)
            np.testing.assert_allclose(gr, rr, atol=1e-12)
            assert np.isclose(np.cos(siemens_inplane_rotation(n, gp) - phi), 1.0)


def test_write_rda_validation(tmp_path):
    kw = dict(f0_mhz=F0, bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM, n_averages=8)
    with pytest.raises(ValueError, match=r"shape \(n_points,\)"):
        write_rda(tmp_path / "a.rda", np.ones((2, 8), complex), **kw)
    with pytest.raises(ValueError, match="override"):
        write_rda(tmp_path / "a.rda", _fid(), **kw, extra={"VectorSize": 3})
    with pytest.raises(ValueError, match="invalid RDA header key"):
        write_rda(tmp_path / "a.rda", _fid(), **kw, extra={"Bad Key": 3})
    with pytest.raises(ValueError, match="line break"):
        write_rda(tmp_path / "a.rda", _fid(), **kw, extra={"PatientName": "a\r\nb"})
    with pytest.raises(ValueError, match="bandwidth_hz"):
        write_rda(tmp_path / "a.rda", _fid(), **{**kw, "bandwidth_hz": 0})
    assert not (tmp_path / "a.rda").exists()
    p = tmp_path / "b.rda"
    p.write_bytes(b"not an rda\r\n")
    with pytest.raises(ValueError, match=r"b\.rda: not an RDA file"):
        read_rda_header(p)
