"""The offline demo dataset generator: scenes, their captions and the COCO-layout files."""
