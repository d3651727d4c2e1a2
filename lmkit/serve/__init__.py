"""`lmkit serve`: an OpenAI-compatible HTTP server over a checkpoint, with a playground page.

engine.py batches concurrent requests on one worker thread (torch only); api.py holds the request schema and
the OpenAI-shaped responses; app.py is the HTTP layer (FastAPI, the optional extra `lmkit[serve]`).
"""
