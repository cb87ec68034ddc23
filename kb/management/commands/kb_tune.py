"""manage.py kb_tune: fine-tune the English embedding model and learn an adapter over the
multilingual one on the knowledge base's phrasings, and switch to them when they are better on
held-out phrasings beyond noise."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from kb.tuning import TrainingSettings
from kb.tuning_runs import kb_tune


class Command(BaseCommand):
    help = (
        "Contrastive fine-tuning of the English model on the entries' phrasings (in-batch negatives), measured "
        "against the active model on held-out phrasings and held-out entries (top-1, recall@5, MRR, answer F1, "
        "paired tests). Better on top-1 and F1 beyond noise: a new model version, every phrasing embedded with it "
        "beside the current vectors, and an atomic switch. Otherwise the active model stays. With the "
        "language-routed embedder, also a linear adapter over the multilingual model's frozen vectors, judged "
        "the same way on held-out phrasings that model answers (e.g. Chinese)."
    )

    def add_arguments(self, parser):
        defaults = TrainingSettings()
        parser.add_argument("--epochs", type=int, default=defaults.epochs)
        parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
        parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
        parser.add_argument(
            "--hard-negatives", action="store_true", help="add the nearest other entry's closest phrasing per anchor"
        )
        parser.add_argument("--no-switch", action="store_true", help="keep a better version without switching to it")
        parser.add_argument("--seed", type=int, default=defaults.seed)

    def handle(self, *args, epochs, batch_size, learning_rate, hard_negatives, no_switch, seed, **options):
        if epochs < 1 or batch_size < 2 or not 0 < learning_rate < 1:
            raise CommandError("--epochs >= 1, --batch-size >= 2 and 0 < --learning-rate < 1")
        training = TrainingSettings(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hard_negatives=hard_negatives,
            seed=seed,
        )
        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if options["verbosity"] < 1:
                return
            bar = bars.get(stage)
            if bar is None:
                for other in bars.values():
                    other.close()
                bar = bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "training" else "item")
            bar.update(done - bar.n)

        outcome = kb_tune(training=training, switch=not no_switch, progress=progress)
        for bar in bars.values():
            bar.close()
        if outcome.model is None:
            self.stdout.write(self.style.WARNING(outcome.reason))
            return
        model = outcome.model
        self.stdout.write(f"{model.label}: trained {model.training_seconds or 0:.0f} s")
        halves = [("English model", model.scores, model.data)]
        if "use_adapter" in model.scores:
            halves.append(("USE adapter", model.scores["use_adapter"], model.data["use_adapter"]))
        for name, scores, data in halves:
            if "active" not in scores:
                continue
            self.stdout.write(
                f"{name}: {data['train_phrasings']} phrasings of {data['entries']} entries; held out "
                f"{data['held_out']} phrasings and {data['out_of_scope']} of held-out entries"
            )
            for side in ("active", "tuned"):
                s = scores[side]
                label = scores["compared_with"] if side == "active" else model.label
                self.stdout.write(
                    f"  {label:12} top-1 {s['top1']:.1%}  recall@5 {s['recall5']:.1%}  MRR {s['mrr']:.3f}  "
                    f"F1 {s['f1']:.3f}"
                )
            self.stdout.write(f"  paired tests: top-1 p={scores['p_top1']:.3g}, F1 p={scores['p_f1']:.3g}")
        style = self.style.SUCCESS if outcome.switched else self.style.WARNING
        self.stdout.write(style(("switched: " if outcome.switched else "kept the active model: ") + outcome.reason))
