"""Caption sources and their readers: every format into one caption table, repaired, split and selected."""
