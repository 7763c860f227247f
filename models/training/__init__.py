"""Training: the experiment (kind, model config, training config), the trainer of any
servable kind (:mod:`models.training.trainer`) and the feature classifier's training."""
