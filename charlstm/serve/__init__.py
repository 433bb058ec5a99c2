"""`charlstm serve`: OpenAI's completions API over the continuous-batching engine (the `serve` extra).

    protocol.py   request parsing, response bodies, errors: no HTTP
    app.py        the Starlette application: routes, streaming, metrics, the bridge from the engine's thread
    static/       the playground page served at /
"""
