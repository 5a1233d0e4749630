"""The engines: one compiled run driver (:mod:`sims.engines.driver`) and the engines that plug into it, one file
each, supplying only their state and their step.

========================  ==========================================================================================
``gd``                    population GD with the closed-form gradients (and a shortcut that carries a weight: the
                          fading shortcut of residual distillation)
``sgd``                   online SGD and GD on a fixed training set (empirical gradients, population monitoring)
``expansion``             GD or SGD on the factors of a deep linear expansion (ExpandNets)
``laperm``                train-by-reconnect: an inner optimizer synchronized to permutations of the initial values
========================  ==========================================================================================

An engine module defines a ``NamedTuple`` record of its options and state arrays, its compiled hooks, and
``workspace(eng, p, k)`` (the work arrays of one thread); ``run_range = driver.register(Record, ...hooks)`` gives its
compiled entry point, which :func:`sims.engines.driver.run_batch` runs over a batch on all threads.
"""
