"""Keyword retrieval: a tokenizer for English, Chinese and mixed text, and BM25 over phrasings.

Text is NFKC-normalised (full-width letters and digits become ASCII) and lower-cased; runs of CJK
ideographs are segmented by jieba in search mode (long words also yield their parts, so 信用卡 in a
question still matches 信用 in a phrasing); other words are stemmed by the Snowball English
stemmer. Stop words are dropped on both sides. BM25 scores are computed by bm25s at build time
(eager scoring: one float per token and phrasing that contains it), so a query only sums a few
sparse columns and the arrays can be stored in the published index file as they are.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

from kb.text import HAN_CHARS

# Bump when tokens change (stemmer, stop words, segmentation): an index file built with another
# version is re-tokenized from its stored texts when loaded, so queries and phrasings agree.
TOKENIZER_VERSION = 1

_TOKEN = re.compile(rf"(?P<cjk>[{HAN_CHARS}]+)|(?P<word>[^\W_{HAN_CHARS}]+)")

# bm25s's English list (Lucene's): the benchmark measured no list and bm25s's 179-word list
# within noise of it (docs/BENCHMARKS.md).
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)
# Particles, pronouns and question words that every Chinese customer question carries; content
# words such as 可以 / 能 (can) stay, since BM25's IDF already discounts what is common.
STOPWORDS_ZH = frozenset(
    "的 了 吗 呢 吧 啊 呀 嘛 哦 么 着 过 地 得 我 你 您 他 她 它 我们 你们 他们 是 在 和 与 及 或 就 都 也 还 "
    "这 那 这个 那个 怎么 怎样 怎么样 如何 什么 为什么 哪 哪里 哪儿 请问 请 一下".split()
)
STOPWORDS = STOPWORDS_EN | STOPWORDS_ZH

_jieba_lock = threading.Lock()


@cache
def _segmenter():
    """jieba's tokenizer with its dictionary loaded: once per process (about 0.7 s), silently."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    with _jieba_lock:
        jieba.initialize()
    return jieba.dt


_local = threading.local()


def _stemmer():
    """This thread's Snowball stemmer: a Stemmer keeps state while it works and must not be shared
    by threads that search at the same time (PyStemmer's documentation)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def keyword_warm_up() -> None:
    """Load jieba's dictionary now rather than in the first Chinese question."""
    _segmenter()
    _stemmer()


def text_tokenize(text: str, *, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """BM25 tokens of one text, in order: jieba words for CJK runs, stemmed words otherwise."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(unicodedata.normalize("NFKC", text).lower()):
        if match.lastgroup == "cjk":
            tokens.extend(word for word in _segmenter().cut_for_search(match.group()) if word not in stopwords)
            continue
        word = match.group()
        # Single letters are stop words or noise ("i", the "t" of "can't"); digits carry meaning.
        if word not in stopwords and (len(word) > 1 or word.isdigit()):
            tokens.append(_stemmer().stemWord(word))
    return tokens


def texts_tokenize(texts: Sequence[str], *, stopwords: frozenset[str] = STOPWORDS) -> list[list[str]]:
    """:func:`text_tokenize` over many texts."""
    return [text_tokenize(text, stopwords=stopwords) for text in texts]


@dataclass(frozen=True)
class KeywordIndex:
    """BM25 over phrasings: for each vocabulary token, the rows (phrasings) holding it and their
    precomputed BM25 term scores (a CSC sparse matrix, as bm25s builds it)."""

    vocabulary: dict[str, int]
    data: np.ndarray  # float32 term score per (token, phrasing) pair
    indices: np.ndarray  # int32 phrasing row of each pair
    indptr: np.ndarray  # int64, token t's pairs are data[indptr[t]:indptr[t + 1]]
    variant_ids: np.ndarray  # int64, one per row
    entry_ids: np.ndarray  # int64, one per row
    tokenizer_version: int = TOKENIZER_VERSION

    @property
    def size(self) -> int:
        """How many phrasings the index holds."""
        return len(self.variant_ids)

    @cached_property
    def _token_best(self) -> np.ndarray:
        """Each token's highest term score over all phrasings (what matching it can add at most)."""
        best = np.zeros(len(self.indptr) - 1, dtype=np.float32)
        present = np.diff(self.indptr) > 0
        if present.any():
            best[present] = np.maximum.reduceat(self.data, self.indptr[:-1][present])
        return best

    def query_bound(self, tokens: Sequence[str]) -> float:
        """The most BM25 score any phrasing could get for these tokens: the sum of each token's best
        term score, a token outside the vocabulary counting as much as the best-scoring known token
        (it is a word no phrasing has, so at least as rare as any). A phrasing's score over this is
        the share of the question's keyword evidence it matches, 0 to 1, comparable across
        questions."""
        if not tokens:
            return 0.0
        unknown = float(self._token_best.max(initial=0.0))
        return float(
            sum(self._token_best[self.vocabulary[token]] if token in self.vocabulary else unknown for token in tokens)
        )

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every phrasing for the query tokens (a repeated token counts again, as in
        bm25s); tokens outside the vocabulary add nothing."""
        scores = np.zeros(self.size, dtype=np.float32)
        for token in tokens:
            column = self.vocabulary.get(token)
            if column is not None:
                start, end = self.indptr[column], self.indptr[column + 1]
                # A phrasing appears at most once per column, so a fancy-indexed add is exact.
                scores[self.indices[start:end]] += self.data[start:end]
        return scores

    def search(self, tokens: Sequence[str], limit: int) -> list[tuple[int, int, float]]:
        """Top phrasings as (variant_id, entry_id, bm25_score), best first; only phrasings sharing
        at least one token with the query, so an empty or unknown query returns []."""
        if not tokens or not self.size or limit <= 0:
            return []
        scores = self.scores(tokens)
        matched = np.flatnonzero(scores > 0)
        if len(matched) > limit:
            matched = matched[np.argpartition(-scores[matched], limit - 1)[:limit]]
        # Ties keep row order, so results do not depend on argpartition's internals.
        matched = matched[np.lexsort((matched, -scores[matched]))]
        return [(int(self.variant_ids[row]), int(self.entry_ids[row]), float(scores[row])) for row in matched]

    def arrays(self, prefix: str = "bm25_") -> dict[str, np.ndarray]:
        """The index as plain arrays (no pickles), to store beside the dense index in one .npz."""
        tokens, offsets = strings_pack(sorted(self.vocabulary, key=self.vocabulary.__getitem__))
        return {
            f"{prefix}tokens": tokens,
            f"{prefix}token_offsets": offsets,
            f"{prefix}data": self.data,
            f"{prefix}indices": self.indices,
            f"{prefix}indptr": self.indptr,
            f"{prefix}variant_ids": self.variant_ids,
            f"{prefix}entry_ids": self.entry_ids,
            f"{prefix}tokenizer_version": np.array(self.tokenizer_version),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "bm25_") -> KeywordIndex:
        """Rebuild from :meth:`arrays`' output (e.g. an opened .npz)."""
        tokens = strings_unpack(arrays[f"{prefix}tokens"], arrays[f"{prefix}token_offsets"])
        return cls(
            vocabulary={token: column for column, token in enumerate(tokens)},
            data=arrays[f"{prefix}data"],
            indices=arrays[f"{prefix}indices"],
            indptr=arrays[f"{prefix}indptr"],
            variant_ids=arrays[f"{prefix}variant_ids"],
            entry_ids=arrays[f"{prefix}entry_ids"],
            tokenizer_version=int(arrays[f"{prefix}tokenizer_version"]),
        )


def strings_pack(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array plus end offsets: numpy's fixed-width str arrays would pad
    every string to the longest one, four bytes per character."""
    encoded = [string.encode("utf-8") for string in strings]
    offsets = np.cumsum([len(item) for item in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def strings_unpack(buffer: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`strings_pack`."""
    raw, ends = buffer.tobytes(), offsets.tolist()
    starts = [0, *ends][: len(ends)]
    return [raw[start:end].decode("utf-8") for start, end in zip(starts, ends, strict=True)]


def keyword_index_build(
    *,
    tokens: Sequence[Sequence[str]],
    variant_ids: np.ndarray,
    entry_ids: np.ndarray,
    k1: float = 1.5,
    b: float = 0.75,
) -> KeywordIndex:
    """BM25 (bm25s, Lucene variant) over tokenized phrasings; row i is ``variant_ids[i]``."""
    import bm25s

    # bm25s sets its own logger to DEBUG at import, which would print a line per build.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    variant_ids = np.asarray(variant_ids, dtype=np.int64)
    entry_ids = np.asarray(entry_ids, dtype=np.int64)
    if not any(tokens):
        # bm25s needs at least one token; with none there is nothing a query could match.
        return KeywordIndex(
            vocabulary={},
            data=np.zeros(0, np.float32),
            indices=np.zeros(0, np.int32),
            indptr=np.zeros(1, np.int64),
            variant_ids=variant_ids,
            entry_ids=entry_ids,
        )
    # A sorted vocabulary makes the stored arrays the same for the same phrasings in any process.
    vocabulary = {token: column for column, token in enumerate(sorted({token for doc in tokens for token in doc}))}
    model = bm25s.BM25(k1=k1, b=b, method="lucene")
    model.index(([[vocabulary[token] for token in doc] for doc in tokens], vocabulary), show_progress=False)
    return KeywordIndex(
        vocabulary=vocabulary,
        data=np.asarray(model.scores["data"], dtype=np.float32),
        indices=np.asarray(model.scores["indices"], dtype=np.int32),
        indptr=np.asarray(model.scores["indptr"], dtype=np.int64),
        variant_ids=variant_ids,
        entry_ids=entry_ids,
    )


def keyword_index_from_texts(*, texts: Sequence[str], variant_ids: np.ndarray, entry_ids: np.ndarray) -> KeywordIndex:
    """Tokenize phrasing texts and build their BM25 index."""
    return keyword_index_build(tokens=texts_tokenize(texts), variant_ids=variant_ids, entry_ids=entry_ids)
