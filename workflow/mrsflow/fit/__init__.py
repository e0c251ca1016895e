"""Linear-combination model (LCM) fitting of 1H MR spectra: one output contract, three
backends, one module each.

- :mod:`~mrsflow.fit.contract`  the output contract (JSON + TSV per spectrum) every backend
  writes, combinations (tCr, tNAA, tCho, Glx), NIfTI-MRS reading;
- :mod:`~mrsflow.fit.builtin`   the project's own fitter (variable projection, numpy/scipy;
  its docstring is the model and estimation in full);
- :mod:`~mrsflow.fit.water`     the water reference's amplitude and linewidth;
- :mod:`~mrsflow.fit.fsl_mrs`   FSL-MRS 2.x through its ``fsl_mrs`` command line;
- :mod:`~mrsflow.fit.lcmodel`   LCModel: its files, control, run and outputs;
- :mod:`~mrsflow.fit.plot`      a fit drawn (the spectra QC page's rows);
- :mod:`~mrsflow.fit.run`       choosing a backend and running it on files, one spectrum or
  a participant's with its QC page.

The names below are the package's interface (``from mrsflow import fit as F``).
"""

from mrsflow.fit.builtin import (
    _CQ,
    NOISE_PPM,
    FitResult,
    _fit_bins,
    _make_baseline,
    _optimise,
    _parse_baseline,
    _resolve_groups,
    _VarPro,
    estimate_noise_sd,
    fit_spectrum,
    resample_basis,
)
from mrsflow.fit.contract import (
    COMBINATIONS,
    CONTRACT_KEYS,
    GROUP_KEYS,
    METABOLITE_KEYS,
    WATER_KEYS,
    _contract,
    _met_entry,
    is_macromolecule,
    not_fitted,
    read_nifti_mrs,
    voigt_fwhm,
    write_result,
)
from mrsflow.fit.fsl_mrs import (
    _fsl_group_entries,
    build_fsl_mrs_command,
    parse_fsl_mrs_output,
    run_fsl_mrs,
)
from mrsflow.fit.plot import draw_fit, draw_message, plot_fit
from mrsflow.fit.run import backend_available, resolve_backend, run_fit, run_participant
from mrsflow.fit.water import fit_water

__all__ = [
    "COMBINATIONS",
    "CONTRACT_KEYS",
    "GROUP_KEYS",
    "METABOLITE_KEYS",
    "NOISE_PPM",
    "WATER_KEYS",
    "FitResult",
    "_CQ",
    "_VarPro",
    "_contract",
    "_fit_bins",
    "_fsl_group_entries",
    "_make_baseline",
    "_met_entry",
    "_optimise",
    "_parse_baseline",
    "_resolve_groups",
    "backend_available",
    "build_fsl_mrs_command",
    "draw_fit",
    "draw_message",
    "estimate_noise_sd",
    "fit_spectrum",
    "fit_water",
    "is_macromolecule",
    "not_fitted",
    "parse_fsl_mrs_output",
    "plot_fit",
    "read_nifti_mrs",
    "resample_basis",
    "resolve_backend",
    "run_fit",
    "run_fsl_mrs",
    "run_participant",
    "voigt_fwhm",
    "write_result",
]
