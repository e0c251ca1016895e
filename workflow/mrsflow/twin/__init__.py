"""The synthetic twin of the study: raw scanner exports with planted ground truth.

- ``design``   study design and planted truth (participants, sessions, scans, concentrations,
  craving), deterministic from the config seed and cheap enough to call when the DAG is built
- ``anatomy``  subject T1 heads made from the MNI152 template, written as DICOM series
- ``spectra``  per-transient MRS signals with drift, jitter, motion, eddy currents and noise
- ``macromolecules``  the planted MM background (a measured-brain parametrisation the fitter
  never sees) and the metabolite-nulled acquisition that measures it
- ``generate``  writing it all to disk: sheets, each participant's exports, the truth
"""
