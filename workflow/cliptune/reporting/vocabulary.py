"""Caption vocabulary for the data report: size and most frequent words.

A word is a maximal run of letters/digits (an inner apostrophe kept: "man's"),
lower-cased, so "Dog," and "dog" are one word. Function words dominate any caption
corpus ("a", "on", "of"), so the report lists the most frequent words twice: all of
them, and without the short fixed list of English function words below.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
TOP_WORDS = 20  # words listed per split and overall

# Articles, pronouns, prepositions, conjunctions and auxiliaries: the words a caption
# needs for grammar, not for content. Only the "content" list leaves them out.
FUNCTION_WORDS = frozenset(["a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "from", "by", "into", "onto", "over", "under", "near", "next", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "there", "their", "his", "her", "he", "she", "they", "them", "some", "while", "as", "up", "down", "out", "off", "very", "just", "has", "have"])


def word_counts(texts: Iterable[str]) -> Counter:
    """Occurrences of every lower-cased word over ``texts``."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(WORD.findall(str(text).lower()))
    return counts


def _top(counts: Counter, n: int, skip: frozenset = frozenset()) -> list[dict]:
    # Ties broken alphabetically so the report never depends on caption order.
    ranked = sorted((w for w in counts if w not in skip), key=lambda w: (-counts[w], w))
    return [{"word": w, "count": int(counts[w])} for w in ranked[:n]]


def vocabulary_report(counts: Counter, n: int = TOP_WORDS) -> dict:
    """Vocabulary size, word count and the ``n`` most frequent (content) words."""
    return {
        "vocabulary_size": len(counts),
        "words": int(sum(counts.values())),
        "words_seen_once": sum(1 for c in counts.values() if c == 1),
        "most_frequent_words": _top(counts, n),
        "most_frequent_content_words": _top(counts, n, FUNCTION_WORDS),
    }


def vocabulary_markdown(vocab: dict, n: int = 10) -> list[str]:
    """Report lines: size, then the first ``n`` words of each list with their counts."""
    def fmt(items):
        return ", ".join(f"{d['word']} ({d['count']:,})" for d in items[:n])
    return [f"- vocabulary: {vocab['vocabulary_size']:,} distinct lower-cased words in "
            f"{vocab['words']:,} words ({vocab['words_seen_once']:,} seen once)",
            f"- most frequent words: {fmt(vocab['most_frequent_words'])}",
            f"- most frequent content words: {fmt(vocab['most_frequent_content_words'])}"]
