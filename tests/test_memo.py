"""The memo of teacher-only work (sims.runs.memo): a hit must give what a fresh computation gives, to the bit, and
only inputs equal bit for bit may hit."""

from __future__ import annotations

import math

import numpy as np

from sims.engines.rng import stream_states
from sims.runs import classify, order_samplers
from sims.runs.memo import ArrayMemo
from sims.runs.samplers import Init, Teacher


def test_only_inputs_equal_bit_for_bit_hit_and_results_are_copies():
    memo = ArrayMemo(2)
    calls = []

    def twice(a):
        calls.append(1)
        return (2.0 * a,)

    x = np.array([0.0, np.nan, 1.5])
    first = memo(("k",), (x,), twice)[0]
    first[0] = 99.0  # the caller owns its result: the memo's copy is untouched
    assert memo(("k",), (x.copy(),), twice)[0][0] == 0.0 and memo.hits == 1 and len(calls) == 1
    memo(("k",), (np.array([-0.0, np.nan, 1.5]),), twice)  # -0.0 is not 0.0 bit for bit: a miss
    memo(("other",), (x,), twice)  # another key: a miss
    assert memo.hits == 1 and len(calls) == 3
    memo(("k",), (x,), twice)  # the oldest entries were dropped (size 2)
    assert len(calls) == 4


def test_draws_from_the_memo_are_the_fresh_draws_and_advance_the_streams_alike():
    teacher = Teacher(w="cap", phi_max=math.pi / 2, a="gaussian", require_spurious=True)
    fresh = []
    for model, init in (("resnet", Init(a="ball")), ("cnn", Init(w="sphere", a="ball"))):
        order_samplers._TEACHERS.clear()
        order_samplers._COSINES.clear()
        st = stream_states(7, 100, 3100)
        fresh.append((order_samplers.draw_order_parameters(st, p=16, k=4, teacher=teacher, init=init, model=model),
                      st))
    hits = order_samplers._TEACHERS.hits
    for (model, init), (want, want_st) in zip((("resnet", Init(a="ball")), ("cnn", Init(w="sphere", a="ball"))),
                                              fresh, strict=True):
        st = stream_states(7, 100, 3100)
        got = order_samplers.draw_order_parameters(st, p=16, k=4, teacher=teacher, init=init, model=model)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64))
        np.testing.assert_array_equal(st, want_st)
    assert order_samplers._TEACHERS.hits >= hits + 1  # the second model's teachers came from the memo


def test_saddle_angles_from_the_memo_are_the_computed_ones():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5000, 8))
    Ss, Qs = A.sum(axis=1), np.einsum("ij,ij->i", A, A)
    classify._SADDLES.clear()
    fresh = classify.saddle_angles_gram(8, Ss, Qs)
    fresh[:] = -5.0  # the caller's copy
    again = classify.saddle_angles_gram(8, Ss.copy(), Qs.copy())
    assert classify._SADDLES.hits >= 1
    np.testing.assert_array_equal(again, classify._cf.bisect_saddle(
        *classify.theory.algebra.saddle_targets_of_sums(8, Ss, Qs), -1.0, reference=True))


def test_a_call_computing_in_another_thread_is_waited_for_not_repeated():
    import threading
    import time

    memo = ArrayMemo(2)
    calls = []

    def slow(a):
        calls.append(1)
        time.sleep(0.2)
        return (a + 1.0,)

    x = np.arange(4.0)
    results = []
    threads = [threading.Thread(target=lambda: results.append(memo(("k",), (x.copy(),), slow)[0])) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and memo.hits == 2
    for r in results:
        np.testing.assert_array_equal(r, x + 1.0)


def test_a_failed_computation_lets_the_waiting_call_compute():
    memo = ArrayMemo(2)

    def fail(a):
        raise RuntimeError("no")

    x = np.arange(3.0)
    try:
        memo(("k",), (x,), fail)
    except RuntimeError:
        pass
    assert memo(("k",), (x,), lambda a: (a * 3.0,))[0].tolist() == [0.0, 3.0, 6.0]


def test_two_different_calls_computing_at_once_both_finish():
    """Two pending computations of the same key but different inputs (a pending entry is removed by identity: its
    arrays cannot be compared with ==)."""
    import threading
    import time

    memo = ArrayMemo(4)
    out = {}

    def slow(delay):
        def f(a):
            time.sleep(delay)
            return (a * 2.0,)
        return f

    first = threading.Thread(target=lambda: out.setdefault("a", memo(("k",), (np.arange(3.0),), slow(0.3))))
    second = threading.Thread(target=lambda: out.setdefault("b", memo(("k",), (np.ones(3),), slow(0.0))))
    first.start()
    time.sleep(0.05)
    second.start()
    second.join()
    first.join()
    assert out["a"][0].tolist() == [0.0, 2.0, 4.0] and out["b"][0].tolist() == [2.0, 2.0, 2.0]
