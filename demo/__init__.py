"""The demo behind ``./run demo``: a backend pays for API calls through Teller,
against local chains and a paid API built with the official x402 and MPP server
code. Needs the dev dependencies (the x402 SDK's FastAPI middleware, pympp) and
the chain tools, which ``./run demo`` installs; Teller itself never imports it."""
