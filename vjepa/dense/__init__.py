"""V-JEPA 2.1's additions to the JEPA objective, each behind a `loss.*` switch whose default is the V-JEPA 1/2
loss: the dense context loss (config.py, distance.py, loss.py) and deep self-supervision over several target
encoder levels (levels.py).

Nothing is imported here: vjepa.config imports `LossConfig` from vjepa.dense.config without pulling in the
models.
"""
