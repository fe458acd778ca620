"""Speed and memory benchmarks, one module each with `main(argv)`, printing JSON; `vjepa bench NAME` runs them.

They are installed with the package (so `vjepa bench` works from a regular install) and still run as
scripts from a checkout (`python benchmarks/step.py ...`). Not part of the pass/fail test suite.
"""
