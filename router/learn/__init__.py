"""Learning a servable routing policy from outcome files (`thinkroute train`).

    outcome files (collect / route-eval format) + router config
      -> outcomes.load_training_set : texts, tasks, per-plan correctness, tokens, costs (config prices)
      -> features.build_source      : the drafter's hidden states (worker HiddenState RPC or in-process,
                                      cached), or the text-only baselines (noise, prompt length)
      -> fit.train_artifact         : Policy.fit on all rows + cross-validated metrics (route-eval's rule
                                      and baselines) + calibration plot -> a `Policy.save` directory
"""
