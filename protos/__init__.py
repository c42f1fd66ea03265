"""The wire contract: `.proto` files under thinkroute/v1 and their generated stubs.

Regenerate the stubs with `python -m protos.codegen`; `tests/unit/test_protos.py`
fails when the checked-in stubs differ from what the `.proto` files generate.
"""
