"""Evaluation of frozen encoders: deterministic eval clips, feature extraction, attentive and linear probes,
multi-view evaluation and the baselines every probe number is reported beside."""
