"""World model on frozen features: the action-conditioned predictor (`ac_predictor`), its losses
(`ac_objective`) and planning with the cross-entropy method and model-predictive control (`plan`)."""
