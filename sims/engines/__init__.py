"""The engines: one compiled run driver (:mod:`sims.engines.driver`) and the engines that plug into it, one file
each, supplying only their state and their step.

========================  ==========================================================================================
``gd``                    population GD with the closed-form gradients (and a shortcut that carries a weight: the
                          fading shortcut of residual distillation)
``sgd``                   online SGD and GD on a fixed training set (empirical gradients, population monitoring)
``expansion``             GD or SGD on the factors of a deep linear expansion (ExpandNets)
``laperm``                train-by-reconnect: an inner optimizer synchronized to permutations of the initial values
========================  ==========================================================================================

An engine module defines a ``NamedTuple`` record of its options and state arrays, registers its compiled hooks with
:func:`sims.engines.driver.register`, provides ``workspace(eng, p, k)`` (the work arrays of one thread) and the
compiled entry point ``run_range`` (three lines calling :func:`sims.engines.driver.drive`).
:func:`sims.engines.driver.run_batch` runs an entry point over a batch on all threads.
"""
