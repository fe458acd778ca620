"""Pretraining: the train step and loop, optimizer groups, schedules, EMA, checkpoints and logging."""
