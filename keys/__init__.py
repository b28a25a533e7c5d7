"""Public development signing keys shipped with m2mauth (installed as ``m2mauth._keys``).

These private keys are published with the source code: anyone can sign tokens with them.
They are for local testing only and must never protect anything real. See README.md here.
"""
