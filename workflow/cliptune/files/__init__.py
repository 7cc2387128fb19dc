"""Files on disk: streaming digests, integrity seals and atomic writes."""
