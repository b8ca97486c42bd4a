"""Scoring candidates with a model: the SCR evaluator's S(X|P) or a likelihood score
(`evaluator`), teacher-forced log-likelihoods (`likelihood`), and DPO's reference
log-likelihoods of a preference file (`reference`, also a command)."""
