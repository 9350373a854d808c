"""The HTTP server (`locas serve`): one model, many memories, OpenAI-compatible API with a memory per request.

``auth`` (API keys and owners), ``store`` (memories on disk, validated, per owner), ``batcher`` (the
generation scheduler: concurrent requests decoded together, each row with its own memory),
``jobs`` (background memorisation, the code of `locas memorize`), ``heap`` (freed memory back to the
system after each job), ``protocol`` (request and
response schemas, OpenAI-style errors), ``app`` (the FastAPI routes). Imports ``learn``,
``text`` and ``core``; nothing imports it but the CLI.
"""
