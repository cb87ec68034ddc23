"""A readable failure message for axe-core results: axe-playwright-python's generate_report() raises
a TypeError on nodes inside a shadow root (their targets are nested lists), which hid what failed
when a violation appeared once in a full run."""

from __future__ import annotations


def axe_summary(results) -> list[dict]:
    """Each violation's rule, impact, help text and the elements it names (targets of any shape)."""
    return [
        {
            "id": violation.get("id"),
            "impact": violation.get("impact"),
            "help": violation.get("help"),
            "nodes": [
                {"target": node.get("target"), "summary": node.get("failureSummary", "")[:300]}
                for node in violation.get("nodes", [])[:5]
            ],
        }
        for violation in results.response.get("violations", [])
    ]


def axe_run(page):
    """axe-core's results for ``page`` as it rests. axe reads colours as drawn at that instant, so
    a panel still fading in (the widget's 0.18 s opening animation) blends its colours with the
    page behind and fails the contrast rule on a slow machine; with reduced motion, which the
    widget honours, everything is drawn in its final state at once."""
    from axe_playwright_python.sync_playwright import Axe

    page.emulate_media(reduced_motion="reduce")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    return Axe().run(page)
