# cliptune: fine-tune CLIP-style image-text models and measure bidirectional retrieval.
#   snakemake --cores 8 --resources gpu=1                    # the real job (config/config.yaml)
#   snakemake --cores 2 --configfile config/demo.yaml        # the offline demo
from snakemake.utils import min_version

min_version("8.20")


# A --configfile replaces the default config instead of merging into it, so the
# demo never inherits the COCO variants. Overlays: --configfile base.yaml extra.yaml
if not config:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/hpo.smk"


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
        expand(os.path.join(FIGURE_DIR, "{figure}.png"), variant=VARIANTS, figure=VARIANT_FIGURES),


# Plots and reports take seconds: on a cluster (--profile profiles/slurm) they run
# on the submitting node instead of waiting in the queue. Downloads: data.smk.
localrules:
    all,
    aggregate,
    loss_overlay,
    summary,
    figures,
    samples,
    data_report,
