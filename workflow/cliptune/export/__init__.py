"""Export a trained variant to the formats its ecosystem loads (``snakemake export``).

- clip_folder: CLIP variants and the from-scratch dual encoder as a Hugging Face
  ``CLIPModel`` + ``CLIPProcessor`` folder (LoRA merged), plus the LoRA adapter folder.
- onnx_tower: trunk + head variants as an ONNX image tower and the frozen text tower's
  Hugging Face folder.
- model_card: the folder's README.md (Hugging Face card) from the run's own files.
- variant_export: the one entry point the workflow rule calls.
"""
