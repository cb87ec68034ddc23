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
