"""Content-keyed caches: decoded images, caption embeddings, frozen-trunk features and the keys that name them."""
