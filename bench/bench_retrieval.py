"""Retrieval quality (issue 4): BANKING77 as a knowledge base (77 entries, the 10,003 training
questions as phrasings, the 3,080 test questions as queries), ranked by each embedder, BM25 alone
and the hybrid (dense + BM25), side by side in one run, through the production search step
(kb.selectors.index_entries_rank over kb.vector_index.LoadedIndex).

Fusion settings are tuned on a split of the training questions (80% phrasings, 20% queries),
never on the test questions. The test set then scores standard RRF (k=60, equal weights), the
best RRF and the best score fusion of the split; the hybrid counts as helping only if the split's
overall choice beats dense search on the test set beyond chance (exact McNemar test, p < 0.05).

Run: .venv/bin/python bench/bench_retrieval.py   (or `make bench`)
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Timer, save, table  # noqa: E402
from bench.retrieval_common import (  # noqa: E402
    OUT_OF_SCOPE,
    RankConfig,
    banking77_load,
    candidates_collect,
    candidates_rank,
    demo_kb_load,
    django_setup,
    fusions_score,
    index_load,
    kb_set_split,
    leave_one_out_rank,
    mcnemar,
    queries_rank_many,
    rankings_score,
    routed_phrasing_vectors,
    routed_query_vectors,
    texts_encode,
    top1_correct,
)

K = 10  # entries ranked per query: MRR is MRR@10
DEPTHS = (10, 20)
RRF_GRID = {"rrf_k": (1, 5, 10, 20, 60), "keyword_weight": (0.1, 0.2, 0.3, 0.5, 0.7, 1.0), "depth": DEPTHS}
SCORE_GRID = {"keyword_weight": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5), "depth": DEPTHS}


def fusion_grid():
    """Every fusion setting tried on the tuning split."""
    from kb.selectors import Fusion

    rrf = [Fusion("rrf", rrf_k=c, keyword_weight=w, depth=d) for c, w, d in itertools.product(*RRF_GRID.values())]
    score = [Fusion("score", keyword_weight=w, depth=d) for w, d in itertools.product(*SCORE_GRID.values())]
    return rrf + score


def best_of(scored: list) -> tuple:
    """The (fusion, scores) with the best top-1, then MRR."""
    return max(scored, key=lambda item: (item[1]["top1"], item[1]["mrr"]))


def routed_vectors_check(embedder, phrasings, queries, phrasing_vectors, query_vectors, sample: int = 24) -> float:
    """Largest difference between the composed routed vectors and the embedder's own output on a
    sample: the routed rows reuse the MiniLM and USE batches only if this is float noise."""
    rows = np.linspace(0, len(phrasings) - 1, sample).astype(int)
    query_rows = np.linspace(0, len(queries) - 1, sample).astype(int)
    own_phrasings = embedder.encode([phrasings[row] for row in rows])
    own_queries = np.vstack([embedder.encode_query(queries[row]) for row in query_rows])
    return float(
        max(
            np.abs(own_phrasings - phrasing_vectors[rows]).max(),
            np.abs(own_queries - query_vectors[query_rows]).max(),
        )
    )


def stopwords_compare(index, split, vectors, fusions: dict, default_candidates) -> list[dict]:
    """BM25 alone and the hybrid on the tuning split with each English stop-word choice
    (``default_candidates``: those already collected with the default list)."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    from kb.keyword import STOPWORDS_EN, STOPWORDS_ZH, keyword_index_build, text_tokenize, texts_tokenize

    choices = {
        "none": STOPWORDS_ZH,
        f"bm25s/Lucene ({len(STOPWORDS_EN)} words, default)": None,
        f"bm25s EN_PLUS ({len(STOPWORDS_EN_PLUS)} words)": frozenset(STOPWORDS_EN_PLUS) | STOPWORDS_ZH,
    }
    rows = []
    for name, stopwords in choices.items():
        candidates = default_candidates
        if stopwords is not None:
            keyword = keyword_index_build(
                tokens=texts_tokenize(split.phrasings, stopwords=stopwords),
                variant_ids=index.keyword.variant_ids,
                entry_ids=index.keyword.entry_ids,
            )
            candidates = candidates_collect(
                index=dataclasses.replace(index, keyword=keyword),
                queries=split.queries,
                vectors=vectors,
                depth=max(DEPTHS),
                tokenize=lambda text, stopwords=stopwords: text_tokenize(text, stopwords=stopwords),
            )
        bm25 = candidates_rank(candidates, fusion=next(iter(fusions.values())), k=K, dense=False)
        row = {"stopwords": name, "bm25": rankings_score(bm25, split.query_entry_ids)}
        for label, fusion in fusions.items():
            row[label] = rankings_score(candidates_rank(candidates, fusion=fusion, k=K), split.query_entry_ids)
        rows.append(row)
    return rows


def main() -> None:
    django_setup()
    from django.conf import settings

    from kb.embedders import (
        LanguageRoutedEmbedder,
        SentenceTransformerEmbedder,
        UniversalSentenceEncoderEmbedder,
        get_embedder,
        math_threads_set,
    )
    from kb.keyword import keyword_warm_up
    from kb.selectors import Fusion, query_hybrid

    started = time.perf_counter()
    kb = banking77_load()
    keyword_warm_up()
    with Timer() as loading:
        minilm, use, default = SentenceTransformerEmbedder(), UniversalSentenceEncoderEmbedder(), get_embedder()
    math_threads_set(os.cpu_count() or 1)  # batch encoding gets every core (get_embedder set one for queries)
    print(f"{len(kb.entry_names)} entries, {len(kb.phrasings)} phrasings, {len(kb.queries)} queries")
    print(f"models loaded in {loading.seconds:.1f} s; default embedder {default.name}")

    encoded = {}
    for name, embedder in (("minilm", minilm), ("use", use)):
        phrasing_vectors, phrasing_seconds = texts_encode(embedder, kb.phrasings)
        query_vectors, query_seconds = texts_encode(embedder, kb.queries, queries=True)
        encoded[name] = (phrasing_vectors, query_vectors)
        print(f"{embedder.name}: {len(kb.phrasings) / phrasing_seconds:.0f} phrasings/s, {query_seconds:.1f} s queries")
    routed = isinstance(default, LanguageRoutedEmbedder)
    if routed:
        # The routed embedder stores [MiniLM | USE] / sqrt(2) per phrasing: compose it from the
        # batches above instead of running both models again, and prove it on a sample.
        phrasing_vectors = routed_phrasing_vectors(encoded["minilm"][0], encoded["use"][0])
        query_vectors = routed_query_vectors(default, kb.queries, encoded["minilm"][1], encoded["use"][1])
        routed_error = routed_vectors_check(default, kb.phrasings, kb.queries, phrasing_vectors, query_vectors)
        if routed_error > 1e-4:
            raise SystemExit(f"composed routed vectors differ from the embedder's by {routed_error}")
        english_share = float(np.mean([default.query_weight(query) == 1.0 for query in kb.queries]))
    else:
        phrasing_vectors, _ = texts_encode(default, kb.phrasings)
        query_vectors, _ = texts_encode(default, kb.queries, queries=True)
        routed_error, english_share = 0.0, None
    encoded["default"] = (phrasing_vectors, query_vectors)

    # --- Tuning on a split of the training questions (the test questions are not looked at).
    split, kept_rows, held_rows = kb_set_split(kb, query_share=0.2, seed=0)
    split_index = index_load(vectors=encoded["default"][0][kept_rows], kb=kb, rows=kept_rows)
    # A held-out phrasing is a query: encode_query gives what encode gave it (same model, one row).
    if routed:
        split_vectors = routed_query_vectors(
            default, split.queries, encoded["minilm"][0][held_rows], encoded["use"][0][held_rows]
        )
    else:
        split_vectors = encoded["default"][0][held_rows]
    with Timer() as tuning:
        candidates = candidates_collect(
            index=split_index, queries=split.queries, vectors=split_vectors, depth=max(DEPTHS)
        )
        standard = Fusion("rrf", rrf_k=60, keyword_weight=1.0, depth=20)
        split_dense = rankings_score(candidates_rank(candidates, fusion=None, k=K), split.query_entry_ids)
        split_bm25 = rankings_score(
            candidates_rank(candidates, fusion=standard, k=K, dense=False), split.query_entry_ids
        )
        grid_scores = fusions_score(candidates, split.query_entry_ids, fusion_grid(), k=K)
        best_rrf = best_of([item for item in grid_scores if item[0].method == "rrf"])
        best_score = best_of([item for item in grid_scores if item[0].method == "score"])
        chosen = best_of([best_rrf, best_score])[0]
        stopword_rows = stopwords_compare(
            split_index, split, split_vectors, {"rrf": best_rrf[0], "score": best_score[0]}, candidates
        )
    print(f"tuning on the training split took {tuning.seconds:.1f} s; chosen: {fusion_label(chosen)}")

    # --- The test questions, each row through the production search step.
    indexes = {
        "minilm": index_load(vectors=encoded["minilm"][0], kb=kb, keyword=False),
        "use": index_load(vectors=encoded["use"][0], kb=kb),
        "default": index_load(vectors=encoded["default"][0], kb=kb),
    }
    configured = Fusion.from_settings()
    # (label, whose vectors (None: keywords alone), hybrid, fusion, dense row compared with)
    row_specs = [
        ("MiniLM (SentenceTransformerEmbedder)", "minilm", False, None, None),
        ("multilingual USE (UniversalSentenceEncoderEmbedder)", "use", False, None, None),
        (f"default embedder ({type(default).__name__})", "default", False, None, None),
        ("BM25 alone (bm25s, kb.keyword)", None, True, standard, "default"),
        (f"hybrid default + BM25, standard {fusion_label(standard)}", "default", True, standard, "default"),
        (f"hybrid default + BM25, tuned {fusion_label(best_rrf[0])}", "default", True, best_rrf[0], "default"),
        (f"hybrid default + BM25, tuned {fusion_label(best_score[0])}", "default", True, best_score[0], "default"),
        (f"hybrid USE + BM25, tuned {fusion_label(chosen)}", "use", True, chosen, "use"),
    ]
    languages = ",".join(settings.KB_HYBRID_LANGUAGES)
    label = f"settings: KB_HYBRID_LANGUAGES={languages}, {fusion_label(configured)}"
    row_specs.append((label, "default", query_hybrid, configured, "default"))
    configs = [
        RankConfig(
            index=indexes[source or "default"],
            vectors=encoded[source][1] if source else None,
            hybrid=hybrid,
            fusion=fusion,
        )
        for _, source, hybrid, fusion, _ in row_specs
    ]
    with Timer() as ranking:
        rankings = queries_rank_many(configs=configs, queries=kb.queries, k=K)
    print(f"ranking the test questions {len(configs)} ways took {ranking.seconds:.1f} s")
    rows, correct = [], {}
    for (label, source, _, fusion, baseline), ranked in zip(row_specs, rankings, strict=True):
        row = {"row": label, "fusion": dataclasses.asdict(fusion) if fusion else None}
        row.update(rankings_score(ranked.entries, kb.query_entry_ids))
        row["latency_ms"] = float(ranked.latency_ms.mean())
        row["latency_p95_ms"] = float(np.percentile(ranked.latency_ms, 95))
        hits = top1_correct(ranked.entries, kb.query_entry_ids)
        if baseline is None:
            correct[source] = hits
        else:
            row["vs_dense"] = {"baseline": baseline, **mcnemar(correct[baseline], hits)}
        rows.append(row)

    # --- The demo knowledge base, leave-one-out by language: few phrasings per entry, unlike BANKING77.
    demo, demo_languages = demo_kb_load(settings.KB_DEMO_FILE)
    demo_phrasing_vectors = default.encode(demo.phrasings)
    demo_query_vectors = np.vstack([default.encode_query(text) for text in demo.phrasings])
    demo_configs = {
        "dense (default embedder)": (False, None),
        "BM25 alone": (True, "bm25"),
        f"hybrid {fusion_label(chosen)}": (True, chosen),
        f"settings: KB_HYBRID_LANGUAGES={','.join(settings.KB_HYBRID_LANGUAGES)}": (query_hybrid, configured),
    }
    demo_rankings = leave_one_out_rank(
        kb=demo, phrasing_vectors=demo_phrasing_vectors, query_vectors=demo_query_vectors, configs=demo_configs, k=K
    )
    demo_rows = []
    for language in ("en", "zh"):
        chosen_rows = np.array([item == language for item in demo_languages])
        expected = np.where(chosen_rows, demo.phrasing_entry_ids, OUT_OF_SCOPE)
        dense_hits = top1_correct(demo_rankings["dense (default embedder)"], expected)
        for name, ranked in demo_rankings.items():
            row = {"language": language, "row": name, "queries": int(chosen_rows.sum())}
            row.update(rankings_score(ranked, expected))
            if not name.startswith("dense"):
                row["vs_dense"] = mcnemar(dense_hits, top1_correct(ranked, expected))
            demo_rows.append(row)

    chosen_row = next(
        row for row in rows if row["fusion"] == dataclasses.asdict(chosen) and row["row"].startswith("hybrid default")
    )
    use_row = next(row for row in rows if row["row"].startswith("hybrid USE"))
    demo_chosen = {row["language"]: row for row in demo_rows if row["row"] == f"hybrid {fusion_label(chosen)}"}
    # A language gets the hybrid if BANKING77 shows a gain beyond chance for the model that serves
    # it (MiniLM for English, USE for Chinese) and the demo KB shows no loss beyond chance.
    recommended = [
        language
        for language, banking in (("en", chosen_row), ("zh", use_row))
        if significant_gain(banking["vs_dense"]) and not significant_loss(demo_chosen[language]["vs_dense"])
    ]
    helps = significant_gain(chosen_row["vs_dense"])
    result = {
        "dataset": {
            "entries": len(kb.entry_names),
            "phrasings": len(kb.phrasings),
            "queries": len(kb.queries),
            "source": "../shared/data/banking77/{train,test}.csv",
        },
        "k": K,
        "default_embedder": default.name,
        "english_query_share": english_share,
        "routed_vectors_max_difference": routed_error,
        "rows": rows,
        "chosen_fusion": dataclasses.asdict(chosen),
        "hybrid_measurably_helps": helps,
        "demo_leave_one_out": {"source": str(settings.KB_DEMO_FILE.name), "rows": demo_rows},
        "recommended_hybrid_languages": recommended,
        "tuning": {
            "split": {"phrasings": len(split.phrasings), "queries": len(split.queries), "seed": 0},
            "dense": split_dense,
            "bm25": split_bm25,
            "standard": {"fusion": dataclasses.asdict(standard), **dict(grid_scores)[standard]},
            "best_rrf": {"fusion": dataclasses.asdict(best_rrf[0]), **best_rrf[1]},
            "best_score": {"fusion": dataclasses.asdict(best_score[0]), **best_score[1]},
            "grid": [{"fusion": dataclasses.asdict(fusion), **scores} for fusion, scores in grid_scores],
            "stopwords": stopword_rows,
            "seconds": tuning.seconds,
        },
        "settings": {
            "KB_HYBRID_SEARCH": settings.KB_HYBRID_SEARCH,
            "KB_HYBRID_LANGUAGES": settings.KB_HYBRID_LANGUAGES,
            "fusion": dataclasses.asdict(configured),
        },
        "seconds": time.perf_counter() - started,
    }
    report_print(result)
    path = save("retrieval", result)
    print(f"saved {path} ({result['seconds']:.0f} s)")


def report_print(result: dict) -> None:
    """The tuning split and the test rows as tables."""
    tuning = result["tuning"]
    split_rows = [("dense (default embedder)", tuning["dense"]), ("BM25 alone", tuning["bm25"])] + [
        (f"hybrid {fusion_label(fusion_of(tuning[key]))}", tuning[key])
        for key in ("standard", "best_rrf", "best_score")
    ]
    print("\nTuning split (training questions only):")
    print(
        table(
            [(name, pct(s["top1"]), pct(s["recall5"]), f"{s['mrr']:.4f}") for name, s in split_rows],
            ("split row", "top-1", "recall@5", "MRR@10"),
        )
    )
    print(
        table(
            [
                (r["stopwords"], pct(r["bm25"]["top1"]), pct(r["rrf"]["top1"]), pct(r["score"]["top1"]))
                for r in tuning["stopwords"]
            ],
            ("English stop words (split)", "BM25 top-1", "best RRF top-1", "best score fusion top-1"),
        )
    )
    print("\nBANKING77 test questions:")
    print(
        table(
            [
                (
                    r["row"],
                    pct(r["top1"]),
                    pct(r["recall5"]),
                    f"{r['mrr']:.4f}",
                    f"{r['latency_ms']:.2f} / {r['latency_p95_ms']:.2f}",
                    vs_dense_label(r.get("vs_dense")),
                )
                for r in result["rows"]
            ],
            ("retrieval", "top-1", "recall@5", "MRR@10", "search+fusion ms (mean / p95)", "top-1 vs dense"),
        )
    )
    print("\nDemo knowledge base, each phrasing against all the others:")
    print(
        table(
            [
                (
                    r["language"],
                    r["row"],
                    r["queries"],
                    pct(r["top1"]),
                    pct(r["recall5"]),
                    f"{r['mrr']:.4f}",
                    vs_dense_label(r.get("vs_dense")),
                )
                for r in result["demo_leave_one_out"]["rows"]
            ],
            ("lang", "retrieval", "questions", "top-1", "recall@5", "MRR@10", "top-1 vs dense"),
        )
    )
    verdict = "beats" if result["hybrid_measurably_helps"] else "does not beat"
    print(f"\nthe split's choice {fusion_label(fusion_of(result))} {verdict} dense search on BANKING77 beyond chance")
    print(f"hybrid recommended for questions in: {result['recommended_hybrid_languages'] or 'no language'}")
    print(f"settings: {result['settings']}")


def significant_gain(comparison: dict) -> bool:
    """More queries fixed than broken, beyond chance (p < 0.05)."""
    return comparison["fixed"] > comparison["broken"] and comparison["p_value"] < 0.05


def significant_loss(comparison: dict) -> bool:
    """More queries broken than fixed, beyond chance (p < 0.05)."""
    return comparison["broken"] > comparison["fixed"] and comparison["p_value"] < 0.05


def fusion_of(scores: dict):
    from kb.selectors import Fusion

    return Fusion(**scores.get("fusion") or scores["chosen_fusion"])


def vs_dense_label(comparison: dict | None) -> str:
    if comparison is None:
        return ""
    return f"+{comparison['fixed']}/-{comparison['broken']} queries, p={comparison['p_value']:.3f}"


def pct(value: float) -> str:
    return f"{value:.2%}"


def fusion_label(fusion) -> str:
    if fusion.method == "rrf":
        return f"(RRF k={fusion.rrf_k:g}, keyword weight {fusion.keyword_weight:g}, depth {fusion.depth})"
    return f"(score fusion, keyword weight {fusion.keyword_weight:g}, depth {fusion.depth})"


if __name__ == "__main__":
    main()
