"""Protocols from headers: every scan's TE, TR, field, spectral width and points read from its
raw file when the workflow starts and matched against the config's protocols; a scan that
matches none stops the run naming the file and the field; several protocols in one study
get one basis set each and quantification uses each scan's own TE and TR."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_bad_input import (
    BW,
    F0,
    GEOM,
    GOOD_SCANS,
    ROOT,
    _one_error_line,
    dry_run,
    raw_folder,
    tiny_export,
)

from mrsflow import nmrs, protocol
from mrsflow.errors import InputError
from mrsflow.vendor import write_rda

CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
MAIN = CONFIG["basis"]["name"]
TE35 = {**CONFIG["sequence"], "te2_ms": 23.0}


def test_headers_of_every_format(tmp_path):
    spar, sdat = tiny_export_paths(tmp_path / "p", te_ms=35.0)
    for path in (spar, sdat):  # either member of the pair
        h = protocol.read_header(path)
        assert (h["te_ms"], h["tr_ms"], h["field_mhz"], h["bandwidth_hz"], h["points"]) == (
            35.0, 2000.0, F0, BW, 2048)
        assert h["averages"] == 64 and h["header"] == str(spar)
    fid = np.exp(-np.arange(1024) / 80.0).astype(complex)
    rda = write_rda(tmp_path / "s.rda", fid, f0_mhz=123.2, bandwidth_hz=1200.0, te_ms=30,
                    tr_ms=1500, geometry=GEOM, n_averages=96)
    h = protocol.read_header(rda)
    assert h["te_ms"] == 30 and h["tr_ms"] == 1500 and h["field_mhz"] == pytest.approx(123.2)
    assert h["bandwidth_hz"] == pytest.approx(1200.0) and h["points"] == 1024
    assert h["averages"] == 96
    nii = nmrs.write(tmp_path / "x_svs.nii.gz", np.ones((1, 1, 1, 512, 16), complex),
                     1 / 4000.0, 297.2, dim_tags=("DIM_DYN", None, None),
                     hdr_ext={"EchoTime": 0.028, "RepetitionTime": 5.0})
    h = protocol.read_header(nii)
    assert (h["te_ms"], h["tr_ms"], h["field_mhz"], h["points"], h["averages"]) == (
        pytest.approx(28.0), pytest.approx(5000.0), pytest.approx(297.2), 512, 16)
    assert h["bandwidth_hz"] == pytest.approx(4000.0)


def tiny_export_paths(stem: Path, **kw) -> tuple[Path, Path]:
    tiny_export(stem, **kw)
    return stem.with_suffix(".SPAR"), stem.with_suffix(".SDAT")


def test_match_names_the_fields_that_differ():
    protos = protocol.protocols({**CONFIG, "protocols": {"te35": TE35}})
    head = {"te_ms": 30.2, "tr_ms": 2010.0, "field_mhz": 127.75, "bandwidth_hz": 2000.0,
            "points": 2048}
    assert protocol.match(head, protos, "x.SPAR") == MAIN  # within the tolerances
    assert protocol.match({**head, "te_ms": 35.0}, protos, "x.SPAR") == "te35"
    with pytest.raises(InputError) as err:
        protocol.match({**head, "te_ms": 50.0, "points": 1024}, protos, "x.SPAR")
    assert str(err.value) == (
        f"x.SPAR: matches no configured protocol: {MAIN}: echo time 50 ms where the protocol "
        "has 30 ms; number of points 1024 where the protocol has 2048 | te35: echo time 50 ms "
        "where the protocol has 35 ms; number of points 1024 where the protocol has 2048")
    single = protocol.protocols(CONFIG)
    with pytest.raises(InputError, match=r"echo time 0.03 ms \(seconds instead of ms\?\) "
                                         r"where the protocol has 30 ms"):
        protocol.match({**head, "te_ms": 0.03}, single, "y.SPAR")


@pytest.mark.parametrize(("te", "fragment"), [
    (35.0, "echo time 35 ms where the protocol has 30 ms"),
    (0.0, "echo time 0 ms where the protocol has 30 ms"),
    (0.03, "echo time 0.03 ms (seconds instead of ms?)"),
    (50.0, "echo time 50 ms where the protocol has 30 ms"),
])
def test_scan_of_another_protocol_stops_at_start_up(tmp_path, te, fragment):
    raw = raw_folder(tmp_path, GOOD_SCANS)
    tiny_export(raw / "sub-02" / "mrs" / "sub-02_cocaine", te_ms=te)
    line = _one_error_line(dry_run(tmp_path, raw))
    assert str(raw / "sub-02" / "mrs" / "sub-02_cocaine.SPAR") in line
    assert fragment in line and "declare each protocol of the study under 'protocols'" in line


def test_two_protocols_in_one_study_get_a_basis_each(tmp_path):
    raw = raw_folder(tmp_path, GOOD_SCANS)
    tiny_export(raw / "sub-02" / "mrs" / "sub-02_cocaine", te_ms=35.0)
    proc = dry_run(tmp_path, None, {"data": {"source": "sheets", "raw_dir": str(raw)},
                                    "protocols": {"press_te35": TE35}}, commands=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bases = set(re.findall(r"--outdir (results/basis/\S+)", proc.stdout))
    assert bases == {f"results/basis/{MAIN}", "results/basis/press_te35"}
    assert '"te2_ms":23.0' in proc.stdout  # the TE 35 basis is simulated with its own split
    # the scan's fit plan names its protocol's basis and its own TE and TR
    assert re.search(r'"basis":"results/basis/press_te35".{0,400}"te_ms":35', proc.stdout)
