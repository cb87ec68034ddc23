"""How well the bot decides: hit testing, threshold calibration, and the search API and admin page
that show what live chat would answer.

It sits above the answering pipeline (chatbot.pipeline) and the knowledge base (kb) it judges, so
kb never has to know about the bot; see the import contracts in pyproject.toml.
"""
