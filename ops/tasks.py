"""Celery tasks of the ops console; each is a thin call into a service."""

from celery import shared_task

from ops.gaps import gaps_mine


@shared_task(ignore_result=True)
def gaps_mine_run():
    """Cluster the recent unanswered questions (on the embedding queue: it embeds them)."""
    from kb.embedders import get_embedder

    gaps_mine(embedder=get_embedder())
