"""The card agent: runs on the PC that holds the operator card, next to the E-Port client,
and dials out to the signing platform, so the platform never has to reach the PC.

Pure Python (websockets only), CPython 3.8+, Windows and Linux. It reuses the platform's
card package (`ukey.protocol`, `ukey.connection`, `ukey.agentproto`) rather than copying it.
Run it with `python -m signagent --platform wss://sign.example.com --token-env SIGNAGENT_TOKEN`
or `python signagent.pyz ...` (the one-file build: `python scripts/build_agent.py`)."""

__version__ = "1.0.0"
