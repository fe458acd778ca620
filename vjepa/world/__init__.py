"""World model on frozen features: the action-conditioned predictor (`ac_predictor`), its losses
(`ac_objective`), planning with the cross-entropy method and model-predictive control (`plan`), AC training
(`config`, `features`, `train`, `ac_checkpoint`: `vjepa train-ac`) and the planning evaluation on the push
scene (`evaluate`, `plan_eval`, `plots`: `vjepa plan`)."""
