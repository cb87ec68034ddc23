"""The ops console (/ops/): transcripts with the bot's reasoning for ops reviewers, KB editors and
agents; built on chatbot's models, never imported by them."""
