"""Answer-or-fall-back quality on BANKING77-OOS (issue 4), through the live pipeline.

The 50 in-scope intents' training questions (`banking77-oos/train`) are imported as the
knowledge base (one entry per intent) and embedded by the real services. `manage.py kb_calibrate`
then picks the thresholds on the validation questions (in scope + in-domain out-of-scope +
general out-of-scope), and fits the answer confidence (chatbot.confidence) beside them; the test
questions are decided with both (the score thresholds and, where kb_calibrate kept it, the
confidence). Everything runs through chatbot.pipeline.answer_question.

Run: .venv/bin/python bench/bench_calibration.py [--both] [--tuned]   (part of `make bench`)
The default's answer confidence is measured beside the same one fitted without the labelled
out-of-scope questions' nearness (kb_calibrate --without-examples). With --both, the retrieval mode
that is not the default (dense or hybrid) is measured too; with
--tuned, kb_tune runs on the knowledge base last and, if it switched to a tuned model, kb_calibrate
and the test questions run again with it (dense).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA, Timer, banking77_oos_kb_load, isolated_environment, save, table  # noqa: E402

OOS = DATA / "banking77-oos"
VALID = [OOS / "valid", OOS / "id-oos" / "valid", OOS / "ood-oos" / "valid"]
TEST = {"in scope": OOS / "test", "in-domain OOS": OOS / "id-oos" / "test", "general OOS": OOS / "ood-oos" / "test"}
MAX_WRONG_RATE = 0.05
MAX_CLARIFY_RATE = 0.10


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-calibration-"))
    os.environ.update(isolated_environment("calibration", workdir))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from chatbot.decisions import Thresholds
    from chatbot.evaluation.calibration import thresholds_evaluate
    from chatbot.evaluation.hit_testing import hit_test_rows
    from chatbot.evaluation.labelled import labelled_rows_read
    from chatbot.models import DecisionThresholds
    from chatbot.selectors import thresholds_for

    version = banking77_oos_kb_load(workdir)

    test_rows = {name: labelled_rows_read(path) for name, path in TEST.items()}
    results, rows = {}, []
    # BANKING77-OOS is English: "hybrid" here means keyword fusion for English questions too.
    default = "hybrid" if settings.KB_HYBRID_SEARCH and "en" in settings.KB_HYBRID_LANGUAGES else "dense"
    # Side by side: the answer confidence reading retrieval features only (as before issue 12's
    # out-of-scope examples), then the default, which also reads nearness to labelled out-of-scope questions.
    without = f"{default} without examples"
    modes = [without, default] + ([{"dense": "hybrid", "hybrid": "dense"}[default]] if "--both" in sys.argv else [])
    modes += ["tuned"] if "--tuned" in sys.argv else []
    for mode in modes:
        if mode == "tuned":
            # kb_tune as a customer runs it (held-out split, paired tests, switch only if better);
            # then kb_calibrate again, in the tuned model's space, and the same test questions.
            from kb.tuning_runs import kb_tune

            with Timer() as tuning:
                outcome = kb_tune()
            print(f"\n[tuned] kb_tune ({tuning.seconds / 60:.1f} min): {outcome.reason}")
            tuned_scores = outcome.model.scores if outcome.model else {}
            print(f"  held-out scores: {tuned_scores}")
            results["kb_tune"] = {
                "switched": outcome.switched,
                "reason": outcome.reason,
                "scores": tuned_scores,
                "data": outcome.model.data if outcome.model else {},
                "minutes": round(tuning.seconds / 60, 1),
            }
            if not outcome.switched:
                continue
        hybrid = mode.startswith("hybrid")
        settings.KB_HYBRID_SEARCH = hybrid
        settings.KB_HYBRID_LANGUAGES = ["en", "zh"] if hybrid else settings.KB_HYBRID_LANGUAGES
        DecisionThresholds.objects.filter(language="en").update(
            calibration={}, answer_confidence=None, confidence_model={}
        )
        output = io.StringIO()
        with Timer() as calibrating, redirect_stdout(output):
            call_command(
                "kb_calibrate",
                *map(str, VALID),
                max_wrong_rate=MAX_WRONG_RATE,
                max_clarify_rate=MAX_CLARIFY_RATE,
                without_examples=mode == without,
                verbosity=0,
                stdout=output,
            )
        print(f"\n[{mode}] kb_calibrate on validation ({calibrating.seconds:.0f} s):")
        print("\n".join("  " + line for line in output.getvalue().strip().splitlines()))
        thresholds = thresholds_for(language="en")
        calibration = DecisionThresholds.objects.get(language="en").calibration
        with Timer() as testing:
            cases = {name: hit_test_rows(rows_, llm_available=False).cases for name, rows_ in test_rows.items()}
        in_scope_cases = cases["in scope"]
        top1 = sum(case.retrieved_right for case in in_scope_cases) / len(in_scope_cases)
        # The same test answers decided both ways: by what kb_calibrate chose (the answer confidence
        # when it beat the score out of fold) and by the score thresholds it chose beside it.
        by_score = Thresholds(
            language="en", **calibration["score_thresholds"], max_suggestions=thresholds.max_suggestions
        )
        deciders = {"by score": by_score}
        if thresholds.uses_confidence:
            deciders["by confidence"] = thresholds
        for decider, rule in deciders.items():
            everything = [case.scored() for group in cases.values() for case in group]
            overall = thresholds_evaluate(everything, rule)
            by_group = {name: thresholds_evaluate([c.scored() for c in group], rule) for name, group in cases.items()}
            results[f"{mode}, {decider}"] = {
                "default": mode == default and rule is thresholds,
                "thresholds": rule.as_dict(),
                "test": overall.as_dict(),
                "test_by_group": {name: metrics.as_dict() for name, metrics in by_group.items()},
                "in_scope_top1": round(top1, 4),
                "confidence": calibration.get("confidence"),
                "seconds": {"calibrate": round(calibrating.seconds, 1), "test": round(testing.seconds, 1)},
                "test_questions_per_second": round(len(everything) / testing.seconds, 1),
            }
            rows.append(
                (
                    f"{mode}, {decider}" + (" (live)" if rule is thresholds else ""),
                    (f"P >= {rule.confidence:.3f}" if rule.uses_confidence else f"{rule.answer:.3f}")
                    + f" / {rule.clarify:.3f} / {rule.margin:g}",
                    f"{top1:.1%}",
                    f"{overall.precision:.3f}",
                    f"{overall.recall:.3f}",
                    f"{overall.f1:.3f}",
                    f"{overall.wrong_rate:.2%}",
                    f"{overall.clarify_rate:.1%}",
                    f"{by_group['in-domain OOS'].out_of_scope_handled:.1%}",
                    f"{by_group['general OOS'].out_of_scope_handled:.1%}",
                )
            )
    print()
    print(
        table(
            rows,
            (
                "retrieval, decided",
                "answer / clarify / margin",
                "in-scope top-1",
                "precision",
                "recall",
                "F1",
                "wrong answers",
                "did you mean",
                "ID-OOS not answered",
                "OOD not answered",
            ),
        )
    )
    result = {
        "knowledge_base": {
            "entries": version.entry_count,
            "phrasings": version.vector_count,
            "embedder": version.embedder,
        },
        "validation_files": [str(path.relative_to(DATA)) for path in VALID],
        "test_files": {name: str(path.relative_to(DATA)) for name, path in TEST.items()},
        "test_questions": {name: len(rows_) for name, rows_ in test_rows.items()},
        "caps": {"max_wrong_rate": MAX_WRONG_RATE, "max_clarify_rate": MAX_CLARIFY_RATE},
        "modes": results,
    }
    print(f"saved {save('calibration', result).relative_to(settings.BASE_DIR)}")


if __name__ == "__main__":
    main()
