"""The OpenAI-compatible embeddings endpoint (app.py) in front of the stack's E5 model."""
