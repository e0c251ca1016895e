# The accumbal glutamate MRS study, from raw scanner exports to the paper's figures.
# Read README.md first; the stages below follow the methods section in order.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/basis.smk"


rule all:
    default_target: True
    input:
        basis_outputs(),
