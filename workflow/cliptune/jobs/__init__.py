"""What a Snakemake job asks of the machine: GPUs and per-attempt resources."""
