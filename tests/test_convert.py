"""Tests for mrsflow.convert: real spec2nii / dcm2niix runs on files written by
mrsflow.vendor (and a tiny pydicom series), asserting numbers.

Data access: a NIfTI-MRS file STORES the conjugate of the project FID convention
(NIfTI-MRS spec Appendix A; spant reads it unconjugated with ppm = ref - Hz/f0).
``nifti_mrs.nifti_mrs.NIFTI_MRS.__getitem__`` conjugates on access, so
``NIFTI_MRS(p)[:] == read_fids(p) == conj(np.asanyarray(nib.load(p).dataobj))``
is the project convention (high ppm at +Hz, ppm = 4.65 + Hz/f0).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nifti_mrs.nifti_mrs import NIFTI_MRS

from mrsflow.convert import (
    ConversionError,
    convert_spectrum,
    convert_t1,
    detect_format,
    ppm_axis,
    read_fids,
    spec2nii_command,
    validate_nifti_mrs,
    voxel_centre_ras,
)
from mrsflow.vendor import VoxelGeometry, write_philips, write_rda

F0 = 127.8
BW = 2000.0
N = 2048
N_PER_CYCLE = 8
METABS = {2.01: 3.0, 3.03: 2.0}  # NAA, Cr (ppm: amplitude)
WATER = {4.65: 20.0}
GEOM = VoxelGeometry((8.0, 12.0, -4.0), (20.0, 10.0, 15.0), (4.0, -7.0, 12.0))


def _signal(peaks: dict[float, float], n: int = N, bw: float = BW, f0: float = F0,
            phase: float = 0.0) -> np.ndarray:
    """Project convention: a line at delta ppm is exp(+2i pi (delta-4.65) f0 t)."""
    t = np.arange(n) / bw
    out = np.zeros(n, complex)
    for ppm, amp in peaks.items():
        out += amp * np.exp(2j * np.pi * (ppm - 4.65) * f0 * t - t / 0.1)
    return out * np.exp(1j * phase)


def _ppm_axis(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(project ppm axis, project-convention data), axis from the header alone."""
    img = nib.load(str(path))
    hdr = json.loads(img.header.extensions[0].get_content())
    f0 = hdr["SpectrometerFrequency"][0]
    dwell = float(img.header["pixdim"][4])
    n = img.shape[3]
    ppm = 4.65 + np.fft.fftshift(np.fft.fftfreq(n, dwell)) / f0
    np.testing.assert_allclose(ppm_axis(path), ppm)
    data = read_fids(path)
    np.testing.assert_array_equal(data, np.conj(np.asanyarray(img.dataobj)))
    return ppm, data


def _standard_ppm_axis(path: Path) -> np.ndarray:
    """ppm axis for the STORED values per the NIfTI-MRS standard / spant
    (``ppm = 4.65 - Hz / f0``): an independent cross-check of the sign."""
    img = nib.load(str(path))
    f0 = json.loads(img.header.extensions[0].get_content())["SpectrometerFrequency"][0]
    hz = np.fft.fftshift(np.fft.fftfreq(img.shape[3], float(img.header["pixdim"][4])))
    return 4.65 - hz / f0


def _spectrum(fid: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft(fid)))


def _peak_ppms(ppm: np.ndarray, fid: np.ndarray, k: int) -> list[float]:
    """ppm of the k largest local maxima of |spectrum|."""
    spec = _spectrum(fid)
    is_max = (spec[1:-1] > spec[:-2]) & (spec[1:-1] >= spec[2:])
    idx = np.flatnonzero(is_max) + 1
    top = idx[np.argsort(spec[idx])[::-1][:k]]
    return [float(ppm[i]) for i in top]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _header(path: Path) -> dict:
    return json.loads(nib.load(str(path)).header.extensions[0].get_content())


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mc_conversion(tmp_path_factory):
    """Philips MC export (2 x N rows, cycle alternating) converted once."""
    root = tmp_path_factory.mktemp("mc")
    rows = []
    for r in range(2 * N_PER_CYCLE):
        sign = 1.0 if r % 2 == 0 else -1.0
        # every row distinct (small phase drift) so the row order is testable
        rows.append((_signal(WATER) + sign * _signal(METABS)) * np.exp(0.03j * r))
    fids = np.array(rows)
    spar, sdat = write_philips(root / "raw" / "sub-01_acq-mc_svs", fids, f0_mhz=F0,
                               bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
                               n_averages_per_row=1)
    hashes = {p: _sha(p) for p in (spar, sdat)}
    out = convert_spectrum(sdat, root / "out" / "sub-01_acq-mc_svs.nii.gz", acq="mc")
    return {"fids": fids, "spar": spar, "sdat": sdat, "out": out, "hashes": hashes}


# ----------------------------------------------------------------------------- Philips MC
def test_mc_shape_tags_and_data(mc_conversion):
    out = mc_conversion["out"]
    fids = mc_conversion["fids"]
    ppm, data = _ppm_axis(out)  # project convention (= conj of file contents)
    assert data.shape == (1, 1, 1, N, 2, N_PER_CYCLE)
    assert NIFTI_MRS(str(out)).dim_tags == ["DIM_METCYCLE", "DIM_DYN", None]
    # first tag fastest: row 2k + c -> (cycle c, dynamic k)
    expected = fids.reshape(N_PER_CYCLE, 2, N).transpose(2, 1, 0)  # (N, cycle, dyn)
    np.testing.assert_allclose(data[0, 0, 0], expected, rtol=0,
                               atol=2e-7 * np.abs(fids).max())
    # cycle 0 carries +metabolites, cycle 1 -metabolites
    metab = 0.5 * (data[0, 0, 0, :, 0, :] - data[0, 0, 0, :, 1, :]).mean(axis=-1)
    water = 0.5 * (data[0, 0, 0, :, 0, :] + data[0, 0, 0, :, 1, :]).mean(axis=-1)
    naa, cr = _peak_ppms(ppm, metab, 2)
    assert naa == pytest.approx(2.01, abs=0.01)
    assert cr == pytest.approx(3.03, abs=0.01)
    assert _peak_ppms(ppm, water, 1)[0] == pytest.approx(4.65, abs=0.01)
    # nothing at the mirror image of NAA (would appear if the conjugation were wrong)
    spec = _spectrum(metab)
    mirror = np.argmin(np.abs(ppm - (2 * 4.65 - 2.01)))
    assert spec[mirror] < 0.01 * spec.max()
    # the file itself follows the standard: stored values on the spant/NIfTI-MRS axis
    raw_metab = np.conj(metab)
    assert _peak_ppms(_standard_ppm_axis(out), raw_metab, 1)[0] == pytest.approx(2.01, abs=0.01)


def test_mc_header_validator_sidecar_and_inputs_untouched(mc_conversion):
    out = mc_conversion["out"]
    hdr = _header(out)
    assert hdr["SpectrometerFrequency"] == [F0]
    assert hdr["ResonantNucleus"] == ["1H"]
    assert hdr["EchoTime"] == pytest.approx(0.030)
    assert hdr["RepetitionTime"] == pytest.approx(2.0)
    assert hdr["SpectralWidth"] == pytest.approx(BW)
    assert hdr["dim_5"] == "DIM_METCYCLE" and hdr["dim_6"] == "DIM_DYN"
    assert hdr["OriginalFile"] == [mc_conversion["sdat"].name]
    validate_nifti_mrs(out)
    sidecar = out.with_name("sub-01_acq-mc_svs.json")
    assert json.loads(sidecar.read_text())["dim_5"] == "DIM_METCYCLE"
    assert sorted(p.name for p in out.parent.iterdir()) == [sidecar.name, out.name]
    for path, digest in mc_conversion["hashes"].items():
        assert _sha(path) == digest
    # nifti_mrs indexing conjugates on access: it returns the project convention
    stored = np.asanyarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(NIFTI_MRS(str(out))[:], np.conj(stored))
    np.testing.assert_array_equal(NIFTI_MRS(str(out))[:], read_fids(out))
    np.testing.assert_allclose(nib.load(str(out)).affine, GEOM.affine(), atol=1e-3)
    np.testing.assert_allclose(voxel_centre_ras(out), GEOM.centre_ras_mm, atol=1e-3)


# ----------------------------------------------------------------------------- classic + ref
def test_philips_classic_and_water_reference(tmp_path):
    metab_fid = _signal(METABS | {4.65: 0.5}, phase=0.3)
    water_fid = _signal(WATER, phase=-0.2)
    _, sdat = write_philips(tmp_path / "raw" / "act", metab_fid[None, :], f0_mhz=F0,
                            bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
                            n_averages_per_row=64, extra={"scan_id": "PRESS TE30"})
    ref_spar, _ = write_philips(tmp_path / "raw" / "ref", water_fid[None, :], f0_mhz=F0,
                                bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
                                n_averages_per_row=8)
    out_dir = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:
        svs = pool.submit(convert_spectrum, sdat, out_dir / "svs.nii.gz", acq="press")
        ref = pool.submit(convert_spectrum, ref_spar, out_dir / "mrsref.nii.gz", acq="press")
        svs, ref = svs.result(), ref.result()
    for out, fid, peak in ((svs, metab_fid, 2.01), (ref, water_fid, 4.65)):
        ppm, data = _ppm_axis(out)
        assert data.shape == (1, 1, 1, N)
        assert "dim_5" not in _header(out)
        np.testing.assert_allclose(data[0, 0, 0], fid, rtol=0, atol=2e-7 * np.abs(fid).max())
        assert _peak_ppms(ppm, data[0, 0, 0], 1)[0] == pytest.approx(peak, abs=0.01)
        np.testing.assert_allclose(nib.load(str(out)).affine, GEOM.affine(), atol=1e-3)
        validate_nifti_mrs(out)
    assert _header(svs)["ProtocolName"] == "PRESS TE30"


# ----------------------------------------------------------------------------- RDA
def test_rda_metabolite_and_water_reference(tmp_path):
    n, bw, f0 = 1024, 1200.0, 123.25
    metab_fid = _signal(METABS, n=n, bw=bw, f0=f0, phase=0.7)
    water_fid = _signal(WATER, n=n, bw=bw, f0=f0)
    kw = dict(f0_mhz=f0, bandwidth_hz=bw, te_ms=30, tr_ms=2000, geometry=GEOM)
    svs_raw = write_rda(tmp_path / "raw" / "svs.rda", metab_fid, n_averages=64, **kw)
    ref_raw = write_rda(tmp_path / "raw" / "ref.rda", water_fid, n_averages=8, **kw)
    digests = {p: _sha(p) for p in (svs_raw, ref_raw)}
    with ThreadPoolExecutor(2) as pool:
        svs = pool.submit(convert_spectrum, svs_raw, tmp_path / "o" / "svs.nii.gz", acq="press")
        ref = pool.submit(convert_spectrum, ref_raw, tmp_path / "o" / "ref.nii.gz", acq="ref")
        svs, ref = svs.result(), ref.result()
    for out, fid, peaks in ((svs, metab_fid, [2.01, 3.03]), (ref, water_fid, [4.65])):
        ppm, data = _ppm_axis(out)
        assert data.shape == (1, 1, 1, n)
        np.testing.assert_allclose(data[0, 0, 0], fid, rtol=0, atol=1e-12)  # float64
        found = _peak_ppms(ppm, data[0, 0, 0], len(peaks))
        std = _peak_ppms(_standard_ppm_axis(out), np.conj(data[0, 0, 0]), len(peaks))
        np.testing.assert_allclose(std, peaks, atol=0.01)
        np.testing.assert_allclose(found, peaks, atol=0.01)
        hdr = _header(out)
        assert hdr["SpectrometerFrequency"] == [f0]
        assert hdr["SpectralWidth"] == pytest.approx(bw)
        assert hdr["Manufacturer"] == "Siemens"
        validate_nifti_mrs(out)
        assert out.with_suffix("").with_suffix(".json").exists()
    for path, digest in digests.items():
        assert _sha(path) == digest


# ----------------------------------------------------------------------------- geometry
def _random_geometries(seed: int, n: int) -> list[VoxelGeometry]:
    rng = np.random.default_rng(seed)
    out = [VoxelGeometry((-10.0, 15.0, 5.0), (12.0, 16.0, 20.0)),
           VoxelGeometry((9.0, 14.0, -6.0), (10.0, 10.0, 10.0), (30.0, -30.0, 30.0))]
    for _ in range(n - len(out)):
        out.append(VoxelGeometry(rng.uniform(-40, 40, 3), rng.uniform(8, 20, 3),
                                 rng.uniform(-30, 30, 3)))
    return out


def _write_for_geometry(tmp_path: Path, vendor: str, i: int, g: VoxelGeometry) -> Path:
    fid = _signal(WATER, n=128)
    kw = dict(f0_mhz=F0, bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=g)
    if vendor == "philips":
        return write_philips(tmp_path / f"g{i}", fid[None, :], n_averages_per_row=1, **kw)[1]
    return write_rda(tmp_path / f"g{i}.rda", fid, n_averages=1, **kw)


def _check_geometry(out: Path, g: VoxelGeometry) -> None:
    aff = nib.load(str(out)).affine
    np.testing.assert_allclose(aff, g.affine(), atol=1e-3)
    np.testing.assert_allclose(voxel_centre_ras(out), g.centre_ras_mm, atol=1e-3)
    edges = aff[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(edges, axis=0),
                               [g.lr_size, g.ap_size, g.cc_size], atol=1e-3)
    np.testing.assert_allclose(edges / np.linalg.norm(edges, axis=0), g.rotation_ras(),
                               atol=1e-5)
    # a corner of the box: the planted centre + half of every edge
    corner = aff @ [0.5, 0.5, 0.5, 1]
    np.testing.assert_allclose(corner[:3], np.asarray(g.centre_ras_mm)
                               + g.edge_vectors_ras().sum(axis=1) / 2, atol=1e-3)


@pytest.mark.parametrize("vendor", ["philips", "rda"])
def test_geometry_round_trip_cli(tmp_path, vendor):
    """Through the real spec2nii CLI (convert_spectrum): an all-axes oblique voxel
    at the +-30 deg limits and a random one."""
    geoms = _random_geometries(11 if vendor == "philips" else 12, 3)[1:]
    jobs = [(_write_for_geometry(tmp_path, vendor, i, g), tmp_path / "out" / f"g{i}.nii.gz")
            for i, g in enumerate(geoms)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda j: convert_spectrum(j[0], j[1], acq="press"), jobs))
    for g, out in zip(geoms, outs, strict=True):
        _check_geometry(out, g)


@pytest.mark.parametrize("vendor", ["philips", "rda"])
def test_geometry_many_with_spec2nii_readers(tmp_path, vendor):
    """Many random voxels through spec2nii's own reader functions in-process
    (``read_sdat_spar_pair`` / ``convert_rda``: the code the CLI runs), saved as
    NIfTI-MRS and re-read with nibabel."""
    from spec2nii.Philips.philips import read_sdat_spar_pair
    from spec2nii.Siemens.rda import convert_rda

    for i, g in enumerate(_random_geometries(21 if vendor == "philips" else 22, 14)):
        raw = _write_for_geometry(tmp_path, vendor, i, g)
        if vendor == "philips":
            imgs, _ = read_sdat_spar_pair(raw, raw.with_suffix(".SPAR"), tags=[None])
        else:
            imgs, _ = convert_rda(raw, None, False)
        out = tmp_path / f"g{i}.nii.gz"
        imgs[0].save(out)
        _check_geometry(out, g)


# ----------------------------------------------------------------------------- detection / command
def test_detect_format(tmp_path):
    spar, sdat = write_philips(tmp_path / "p", _signal(WATER, n=64)[None, :], f0_mhz=F0,
                               bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
                               n_averages_per_row=1)
    rda = write_rda(tmp_path / "s.rda", _signal(WATER, n=64), f0_mhz=F0, bandwidth_hz=BW,
                    te_ms=30, tr_ms=2000, geometry=GEOM, n_averages=1)
    assert detect_format(sdat) == detect_format(spar) == "philips"
    assert detect_format(rda) == "rda"

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: unknown spectroscopy file type"):
        detect_format(txt)
    fake_rda = tmp_path / "fake.rda"
    fake_rda.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"fake\.rda: unknown spectroscopy file type"):
        detect_format(fake_rda)
    lonely = tmp_path / "lonely.SDAT"
    lonely.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"lonely\.SDAT: unknown .*partner file not found"):
        detect_format(lonely)
    renamed = tmp_path / "spectrum.SDAT"  # right extension, wrong content in the SPAR
    renamed.write_bytes(b"\x00" * 64)
    (tmp_path / "spectrum.SPAR").write_text("just text\n")
    with pytest.raises(ValueError, match=r"spectrum\.SDAT: unknown spectroscopy file type"):
        detect_format(renamed)
    with pytest.raises(FileNotFoundError, match=r"missing\.rda"):
        detect_format(tmp_path / "missing.rda")


def test_spec2nii_command(tmp_path):
    fid = _signal(WATER, n=64)
    kw = dict(f0_mhz=F0, bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
              n_averages_per_row=1)
    spar, sdat = write_philips(tmp_path / "mc", np.stack([fid] * 6), **kw)
    cmd = spec2nii_command(spar, tmp_path / "o", "name", acq="mc", n_rows=None)
    assert Path(cmd[0]).name == "spec2nii"
    assert cmd[1:] == ["philips", "-t", "DIM_METCYCLE", "DIM_DYN", "-s", "2", "3",
                       "-f", "name", "-o", str(tmp_path / "o"), "-j", str(sdat), str(spar)]
    assert spec2nii_command(sdat, "o", "n", acq="mc", n_rows=16)[2:8] == [
        "-t", "DIM_METCYCLE", "DIM_DYN", "-s", "2", "8"]
    assert spec2nii_command(sdat, "o", "n", acq="press", n_rows=None)[1:4] == [
        "philips", "-t", "DIM_DYN"]
    assert spec2nii_command(sdat, "o", "n", acq="press", n_rows=1,
                            json_sidecar=False)[1:] == [
        "philips", "-f", "n", "-o", "o", str(sdat), str(spar)]
    with pytest.raises(ValueError, match="even number"):
        spec2nii_command(sdat, "o", "n", acq="mc", n_rows=5)
    with pytest.raises(ValueError, match="bare file stem"):
        spec2nii_command(sdat, "o", "n.nii.gz", acq="mc", n_rows=None)

    rda = write_rda(tmp_path / "s.rda", fid, f0_mhz=F0, bandwidth_hz=BW, te_ms=30,
                    tr_ms=2000, geometry=GEOM, n_averages=1)
    assert spec2nii_command(rda, "o", "n", acq="press", n_rows=None)[1:] == [
        "rda", "-f", "n", "-o", "o", "-j", str(rda)]
    with pytest.raises(ValueError, match=r"s\.rda: RDA holds one pre-averaged FID"):
        spec2nii_command(rda, "o", "n", acq="mc", n_rows=None)


# ----------------------------------------------------------------------------- errors
def test_truncated_sdat_spec2nii_failure_names_file(tmp_path):
    fids = np.stack([_signal(WATER, n=128)] * 4)
    _, sdat = write_philips(tmp_path / "trunc", fids, f0_mhz=F0, bandwidth_hz=BW,
                            te_ms=30, tr_ms=2000, geometry=GEOM, n_averages_per_row=1)
    sdat.write_bytes(sdat.read_bytes()[: 3 * 128 * 8])  # one row short
    out_dir = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"trunc\.SDAT: spec2nii failed") as err:
        convert_spectrum(sdat, out_dir / "x.nii.gz", acq="mc")
    assert "reshape" in str(err.value)  # spec2nii's own message is quoted
    assert list(out_dir.iterdir()) == []  # no partial output / temp dirs left


def test_vectorised_sdat_reader_equals_spec2nii(tmp_path):
    """convert runs spec2nii with its SDAT float loop replaced by read_sdat_vectorised: the
    arrays must be bit-identical to spec2nii's own read_sdat, on a real SDAT and on random
    words covering every exponent (zero, reserved operand, IEEE-subnormal range, maximum),
    an unpaired float and trailing bytes; a wrong size fails with the same error."""
    from spec2nii.Philips import philips

    from mrsflow.convert import _vectorised_sdat_reader, read_sdat_vectorised

    original = philips.read_sdat
    with _vectorised_sdat_reader():  # engaged with the installed spec2nii
        assert philips.read_sdat is read_sdat_vectorised
    assert philips.read_sdat is original

    fids = np.stack([_signal(METABS, n=256, phase=k) for k in range(6)]) * 1e3
    _, sdat = write_philips(tmp_path / "x", fids, f0_mhz=F0, bandwidth_hz=BW, te_ms=30,
                            tr_ms=2000, geometry=GEOM, n_averages_per_row=1)
    cases = [(sdat, 256, 6), (sdat, 6 * 256, 1)]
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**16, size=2 * 2 * 64 * 3, dtype=np.uint32).astype("<u2")
    hi = words[0::2]  # sign | exponent | top fraction bits; set every exponent once
    hi[:256] = (hi[:256] & 0x807F) | (np.arange(256, dtype=np.uint16) << 7)
    rnd = tmp_path / "random.SDAT"
    rnd.write_bytes(words.tobytes() + b"\x01\x02")  # trailing bytes are ignored
    cases += [(rnd, 64, 3), (rnd, 3 * 64, 1)]
    odd = tmp_path / "odd.SDAT"
    odd.write_bytes(words.tobytes()[: 4 * 129])  # 64 complex points and one unpaired float
    cases += [(odd, 64, 1)]
    for path, samples, rows in cases:
        ours = read_sdat_vectorised(str(path), samples, rows)
        theirs = philips.read_sdat(str(path), samples, rows)
        assert ours.dtype == theirs.dtype == np.complex64
        assert ours.shape == theirs.shape
        assert ours.tobytes() == theirs.tobytes(), path.name
    with pytest.raises(ValueError, match="reshape") as ours_err:
        read_sdat_vectorised(str(sdat), 256, 5)
    with pytest.raises(ValueError, match="reshape") as theirs_err:
        philips.read_sdat(str(sdat), 256, 5)
    assert str(ours_err.value) == str(theirs_err.value)


def test_spar_missing_key_clear_error(tmp_path):
    spar, sdat = write_philips(tmp_path / "nokey", _signal(WATER, n=64)[None, :], f0_mhz=F0,
                               bandwidth_hz=BW, te_ms=30, tr_ms=2000, geometry=GEOM,
                               n_averages_per_row=1)
    spar.write_text("".join(ln for ln in spar.read_text().splitlines(keepends=True)
                            if not ln.startswith("samples")))
    with pytest.raises(ValueError, match=r"nokey\.SPAR: SPAR is missing required key\(s\): "
                                         r"samples"):
        convert_spectrum(sdat, tmp_path / "o" / "x.nii.gz", acq="press")


def test_bad_output_name_and_invalid_nifti(tmp_path):
    rda = write_rda(tmp_path / "s.rda", _signal(WATER, n=64), f0_mhz=F0, bandwidth_hz=BW,
                    te_ms=30, tr_ms=2000, geometry=GEOM, n_averages=1)
    with pytest.raises(ValueError, match=r"x\.nii: output must be"):
        convert_spectrum(rda, tmp_path / "x.nii", acq="press")
    plain = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), plain)
    with pytest.raises(ValueError, match=r"plain\.nii\.gz: not a valid NIfTI-MRS"):
        validate_nifti_mrs(plain)
    with pytest.raises(ValueError, match=r"plain\.nii\.gz: not a single-voxel"):
        voxel_centre_ras(plain)


# ----------------------------------------------------------------------------- T1 / dcm2niix
def test_convert_t1_empty_dir_names_directory(tmp_path):
    empty = tmp_path / "dicom_empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match=r"dicom_empty: dcm2niix"):
        convert_t1(empty, tmp_path / "anat" / "sub-01_T1w.nii.gz")
    assert list((tmp_path / "anat").iterdir()) == []
    with pytest.raises(ValueError, match=r"nowhere: not a directory"):
        convert_t1(tmp_path / "nowhere", tmp_path / "anat" / "sub-01_T1w.nii.gz")


def _write_dicom_series(folder: Path, rows: int, cols: int, n_slices: int,
                        ipp0: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray,
                        spacing: tuple[float, float], thickness: float) -> np.ndarray:
    """Single-frame MR Image Storage series; returns volume[slice, row, col]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    normal = np.cross(row_dir, col_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    vol = np.zeros((n_slices, rows, cols), np.uint16)
    for s in range(n_slices):
        vol[s] = 1000 * (s + 1) + 10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
        ds.PatientName, ds.PatientID = "anon", "anon"
        ds.StudyDate, ds.SeriesDate, ds.AcquisitionTime = "20240101", "20240101", "120000"
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 2, s + 1, 1
        ds.SeriesDescription = ds.ProtocolName = "t1_mprage"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = 3, 2300, 2.98
        ds.ImagePositionPatient = [float(v) for v in ipp0 + s * thickness * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [spacing[0], spacing[1]]  # [between rows, between columns]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = vol[s].tobytes()
        ds.save_as(folder / f"IM_{s:04d}.dcm", enforce_file_format=True)
    return vol


def test_convert_t1_tiny_series_affine(tmp_path):
    rows, cols, n_sl = 4, 5, 16  # the fewest slices convert_t1 takes (MIN_T1_SLICES)
    ang = np.deg2rad(10.0)
    row_dir = np.array([1.0, 0.0, 0.0])  # LPS
    col_dir = np.array([0.0, np.cos(ang), -np.sin(ang)])
    ipp0 = np.array([-20.0, -30.0, 15.0])
    spacing, thick = (1.5, 1.2), 2.0
    vol = _write_dicom_series(tmp_path / "dcm", rows, cols, n_sl, ipp0, row_dir, col_dir,
                              spacing, thick)
    out = convert_t1(tmp_path / "dcm", tmp_path / "anat" / "sub-01_T1w.nii.gz")
    assert out.exists() and out.with_name("sub-01_T1w.json").exists()
    img = nib.load(str(out))
    data = np.asanyarray(img.dataobj)
    assert sorted(data.shape) == sorted((cols, rows, n_sl))
    normal = np.cross(row_dir, col_dir)
    flip = np.array([-1.0, -1.0, 1.0])
    # every NIfTI voxel: world position -> DICOM (slice,row,col) -> same intensity
    for ijk in np.ndindex(*data.shape):
        lps = (img.affine @ [*ijk, 1])[:3] * flip
        rel = lps - ipp0
        c = rel @ row_dir / spacing[1]
        r = rel @ col_dir / spacing[0]
        s = rel @ normal / thick
        idx = np.rint([s, r, c]).astype(int)
        np.testing.assert_allclose([s, r, c], idx, atol=1e-3)
        assert data[ijk] == vol[tuple(idx)]
    # voxel (0,0,0) is a DICOM grid point; slice direction is the DICOM normal
    np.testing.assert_allclose(np.abs(img.affine[:3, 2]) / thick,
                               np.abs(normal * flip), atol=1e-4)
