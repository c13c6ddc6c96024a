"""Knowledge distillation: losses (pure functions), teachers (one or many, logit cache), trainer."""
