"""mrsflow: the science of the accumbal-glutamate MRS study, one module per stage.

Modules, in the order of the methods section:

- ``basis``      density-matrix simulation of PRESS metabolite basis spectra
- ``twin``       the synthetic twin: raw scanner exports with planted ground truth
- ``preprocess`` metabolite-cycling reconstruction, alignment, averaging, QC
- ``segment``    T1 tissue segmentation and MRS-voxel tissue fractions
- ``fit``        linear-combination model fitting
- ``quantify``   water-scaled, tissue- and relaxation-corrected concentrations
- ``stats``      the study's statistical models
- ``figures``    the paper's figures
"""

__version__ = "0.1.0"
