# cliptune: fine-tune CLIP-style image-text models and measure bidirectional retrieval.
#   snakemake --cores 8 --resources gpu=1                    # the real job (config/config.yaml)
#   snakemake --cores 2 --configfile config/demo.yaml        # the offline demo
from snakemake.utils import min_version

min_version("8.20")


# Which config (config/README.md, "Choosing the config"):
# - no --configfile: config/config.yaml is the base;
# - --configfile a.yaml [b.yaml ...] replaces that default (so the demo never inherits
#   the COCO variants); several files merge left to right, so overlay the real study
#   by naming it: --configfile config/config.yaml my_overlay.yaml;
# - --config key=value overrides always merge last, over whichever base was chosen:
#   snakemake -n --config train='{epochs: 1}'. Their values are read as YAML (common.smk).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/hpo.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        ABLATION_CSV,
        ABLATION_PNG,
        DATA_REPORT,
        SAMPLES_PNG,
        expand(os.path.join(VARIANT_DIR, "loss_curves.png"), variant=VARIANTS),
        LOSS_OVERLAY_PNG,
        SUMMARY_MD,
        expand(
            os.path.join(FIGURE_DIR, "{figure}.png"),
            variant=VARIANTS,
            figure=[*VARIANT_FIGURES, *ZERO_SHOT_FIGURES],
        ),
        QUERIES_ACROSS_PNG,
        # The current study's aggregates, copied to the top of results/ (report.smk).
        expand("results/{file}", file=CURRENT_FILES),


# Plots and reports take seconds: on a cluster (--profile profiles/slurm) they run
# on the submitting node instead of waiting in the queue. Downloads: data.smk. They
# read files only: evaluate computed every number and embedding they draw.
localrules:
    all,
    aggregate,
    figures,
    loss_curves,
    loss_overlay,
    queries_across_variants,
    summary,
    samples,
    data_report,
    current_study,
