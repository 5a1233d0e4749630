"""Training methods beyond plain GD/SGD, from other papers: the fading shortcut of residual distillation
(:mod:`~sims.methods.distill`), train-by-reconnect (:mod:`~sims.methods.laperm`) and deep linear expansions
(:mod:`~sims.methods.expansion`).  Each defines its options and its own mathematics; the compiled step lives in
:mod:`sims.engines`."""
