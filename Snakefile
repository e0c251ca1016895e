# The accumbal glutamate MRS study, from raw scanner exports to the paper's figures.
# Read README.md first; the stages below follow the methods section in order.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


# the twin's rules exist only when the twin is the data source (they write under results/)
if TWIN:

    include: "workflow/rules/twin.smk"


include: "workflow/rules/basis.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/quantify.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        basis_outputs(),
        twin_outputs(),
        "results/tables/metabolites.tsv",
        "results/stats/summary.md",
        REPORT_OUTPUTS,
        expand("results/figures/fig{n}.{ext}", n=[1, 2, 3], ext=["pdf", "png"]),
        expand("results/figures/figS1_linewidth.{ext}", ext=["pdf", "png"]),
        compare_outputs(),


# While jobs run, .snakemake/mrsflow-run.json names this run, so that a second snakemake
# started here stops with a message naming it (mrsflow.startup.live_run).
onstart:
    startup.mark_run()


# After a run, Snakemake's scheduler may still hold re-evaluation timers (non-daemon
# threading.Timer, armed one --max-jobs-per-timespan period ahead; see the workstation
# profile); the interpreter waits for them before exiting. Nothing is left to schedule
# once the workflow has finished, so they are cancelled and the command returns at once.
onsuccess:
    startup.clear_run()
    cancel_pending_timers()


onerror:
    startup.clear_run()
    cancel_pending_timers()
