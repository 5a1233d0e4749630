"""Peer implementations of batched population GD (and minibatch SGD) for ``gd_throughput.py``.

Every peer advances ``R`` independent runs of the weight-normalized model (ResNet: the effective filter
``w~ = w + v`` is the state, exactly as the engine carries it) from the same starting points ``(WT0, A0)`` with the
same two-stage schedule (step ``t`` uses Stage I's step sizes when ``t < T1``, Stage II's after), and returns the
final ``(WT, A)``.  The loss they descend is the closed form of SCIENCE.md section 2 written in the invariants
``S = 1.a, Q = a.a, P = a.a*`` and the angle ``phi`` between ``w~`` and ``w*``::

    L = [2 P c phi - 2 P s + 2 P - Q - Qs + S^2 - 2 S Ss + Ss^2 + pi (Q + Qs - 2 P c)] / (4 pi),  c, s = cos, sin phi

- NumPy: the closed-form gradient (the same formulas the engine uses), vectorized over runs on ``(R, p)`` and
  ``(R, k)`` arrays, in place where NumPy allows.
- PyTorch: autograd of ``L`` on batched float64 tensors (the sum over runs of the per-run losses, whose gradient
  is the stack of per-run gradients).
- JAX: ``jit(fori_loop(vmap(grad(L))))`` in float64.

Peers that are not installed raise :class:`MissingError` from their ``make_*`` factory.

The order-parameter map (``reduced_throughput.py``): :func:`make_numpy_reduced` and :func:`make_jax_reduced` advance
the coordinates ``(u, r, x, y, z)`` of ``w~ = u w* + r e`` and ``a = x a0 + y 1 + (1 + z) a*`` (weight-normalized,
no moving shortcut, so ``sims.engines.reduced``'s ``r2`` stays 0 and is not carried) with the formulas of
``theory.closed_forms.gram_deviations`` / ``deviation_gradient`` at ``rho = 1``; arrays of shape ``(R,)``, one
vectorized update per step.  Online SGD: :func:`make_numpy_sgd`, :func:`make_torch_sgd`, :func:`make_jax_sgd`, the
same minibatch step with each library's own Gaussian generator (exposed as ``run.step(W, A, WS, AS, Z, ew, ea)`` so
that the step itself can be compared on a shared ``Z``).
"""

from __future__ import annotations

import math

import numpy as np

PI = math.pi


class MissingError(RuntimeError):
    """The peer's library is not importable."""


def closed_form_loss(WT, A, WS, AS):
    """Population loss of each run (NumPy, float64), the engine's formula: used to compare final states."""
    ww = np.einsum("ij,ij->i", WT, WT)
    wws = np.einsum("ij,ij->i", WT, WS)
    ws2 = np.einsum("ij,ij->i", WS, WS)
    S, Q, P = A.sum(1), np.einsum("ij,ij->i", A, A), np.einsum("ij,ij->i", A, AS)
    Ss, Qs = AS.sum(1), np.einsum("ij,ij->i", AS, AS)
    n = np.sqrt(ww)
    c_raw = wws / n
    s_raw = np.sqrt(np.maximum(ws2 - c_raw * c_raw, 0.0))
    h = np.hypot(c_raw, s_raw)
    phi, c, s = np.arctan2(s_raw, c_raw), c_raw / h, s_raw / h
    return (2 * P * c * phi - 2 * P * s + 2 * P - Q - Qs + S**2 - 2 * S * Ss + Ss**2 + PI * (-2 * P * c + Q + Qs)) / (
        4 * PI
    )


# ---------------------------------------------------------------------------------------------------- NumPy GD
def make_numpy():
    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        W = np.array(WT0, dtype=np.float64, order="C")
        A = np.array(A0, dtype=np.float64, order="C")
        ws2 = np.einsum("ij,ij->i", WS, WS)
        Ss = AS.sum(1)
        tw = np.empty_like(W)
        ta = np.empty_like(A)
        L_Q = 0.25 * (PI - 1.0) / PI
        for t in range(steps):
            ew, ea = (ew1, ea1) if t < T1 else (ew2, ea2)
            ww = np.einsum("ij,ij->i", W, W)
            wws = np.einsum("ij,ij->i", W, WS)
            S = A.sum(1)
            P = np.einsum("ij,ij->i", A, AS)
            n = np.sqrt(ww)
            c_raw = wws / n
            s_raw = np.sqrt(np.maximum(ws2 - c_raw * c_raw, 0.0))
            h = np.hypot(c_raw, s_raw)
            phi = np.arctan2(s_raw, c_raw)
            c, s = c_raw / h, s_raw / h
            L_c = (0.5 / PI) * P * (phi - PI)
            L_S = (0.5 / PI) * (S - Ss)
            L_P = (0.5 / PI) * (c * phi - PI * c - s + 1.0)
            alpha = 1.0 + ew * L_c * c_raw / ww
            beta = -ew * L_c / n
            # w~ <- alpha w~ + beta w*,  a <- (1 - 2 ea L_Q) a - ea L_P a* - ea L_S
            np.multiply(W, alpha[:, None], out=W)
            np.multiply(WS, beta[:, None], out=tw)
            W += tw
            A *= 1.0 - 2.0 * ea * L_Q
            np.multiply(AS, (-ea * L_P)[:, None], out=ta)
            A += ta
            A -= (ea * L_S)[:, None]
        return W, A

    return run


# ---------------------------------------------------------------------------------------------------- PyTorch GD
def make_torch(threads: int = 2):
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingError(str(exc)) from None
    torch.set_num_threads(threads)

    def loss_sum(W, A, WS, AS, ws2, Ss, Qs):
        ww = (W * W).sum(1)
        wws = (W * WS).sum(1)
        S, Q, P = A.sum(1), (A * A).sum(1), (A * AS).sum(1)
        c_raw = wws / torch.sqrt(ww)
        # clamp: sin(phi) = 0 exactly would make d sqrt / d s2 infinite (the engine uses 0 there too)
        s_raw = torch.sqrt(torch.clamp(ws2 - c_raw * c_raw, min=1e-300))
        phi = torch.atan2(s_raw, c_raw)
        c, s = torch.cos(phi), torch.sin(phi)
        L = (2 * P * c * phi - 2 * P * s + 2 * P - Q - Qs + S * S - 2 * S * Ss + Ss * Ss + PI * (Q + Qs - 2 * P * c))
        return L.sum() / (4 * PI)

    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        W = torch.tensor(WT0, dtype=torch.float64)
        A = torch.tensor(A0, dtype=torch.float64)
        tWS = torch.tensor(WS, dtype=torch.float64)
        tAS = torch.tensor(AS, dtype=torch.float64)
        ws2, Ss, Qs = (tWS * tWS).sum(1), tAS.sum(1), (tAS * tAS).sum(1)
        for t in range(steps):
            ew, ea = (ew1, ea1) if t < T1 else (ew2, ea2)
            W.requires_grad_(True)
            A.requires_grad_(True)
            gW, gA = torch.autograd.grad(loss_sum(W, A, tWS, tAS, ws2, Ss, Qs), (W, A))
            with torch.no_grad():
                W = W - ew * gW
                A = A - ea * gA
        return W.detach().numpy(), A.detach().numpy()

    return run


# ---------------------------------------------------------------------------------------------------- JAX GD
def make_jax():
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingError(str(exc)) from None

    def loss_one(w, a, ws, ast):
        ww, wws, ws2 = w @ w, w @ ws, ws @ ws
        S, Q, P, Ss, Qs = a.sum(), a @ a, a @ ast, ast.sum(), ast @ ast
        c_raw = wws / jnp.sqrt(ww)
        s_raw = jnp.sqrt(jnp.maximum(ws2 - c_raw * c_raw, 1e-300))
        phi = jnp.arctan2(s_raw, c_raw)
        c, s = jnp.cos(phi), jnp.sin(phi)
        L = 2 * P * c * phi - 2 * P * s + 2 * P - Q - Qs + S * S - 2 * S * Ss + Ss * Ss + PI * (Q + Qs - 2 * P * c)
        return L / (4 * PI)

    batched_grad = jax.vmap(jax.grad(loss_one, argnums=(0, 1)))

    @jax.jit
    def _run(W, A, WS, AS, steps, T1, ew1, ea1, ew2, ea2):
        def body(t, carry):
            W, A = carry
            gW, gA = batched_grad(W, A, WS, AS)
            first = t < T1
            ew = jnp.where(first, ew1, ew2)
            ea = jnp.where(first, ea1, ea2)
            return W - ew * gW, A - ea * gA

        return lax.fori_loop(0, steps, body, (W, A))

    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        W, A = _run(jnp.asarray(WT0), jnp.asarray(A0), jnp.asarray(WS), jnp.asarray(AS), steps, T1,
                    ew1, ea1, ew2, ea2)
        W.block_until_ready()
        return np.asarray(W), np.asarray(A)

    return run


# ---------------------------------------------------------------------------------------------------- NumPy SGD
def make_numpy_sgd(batch_size: int, seed: int = 0):
    """Online SGD on the empirical loss ``0.5 mean_b (f(Z_b) - f*(Z_b))^2`` of a fresh Gaussian minibatch per
    step, the step of ``sims.engines.finite_sample`` ("sgd"): with ``u = w~/||w~||``, ``h_bj = u.Z_bj``,
    ``r_b = f - f*``, ``g_u = mean_b r_b sum_j a_j 1[h_bj > 0] Z_bj``, the filter gradient is
    ``(I - u u^T) g_u / ||w~||`` and ``d/da_j = mean_b r_b relu(h_bj)``.  ``Z`` is one ``(R, B k, p)`` array per
    step; both projections (student and teacher) are one batched matmul ``Z @ [u, w*]`` and ``g_u`` a second one."""
    rng = np.random.default_rng(seed)
    B = batch_size

    def step(W, A, WS, AS, Z, ew, ea, UW=None):
        """One SGD step in place on ``(W, A)`` with the minibatch ``Z`` of shape ``(R, B k, p)``."""
        R, p = W.shape
        k = A.shape[1]
        if UW is None:
            UW = np.empty((R, p, 2))
            UW[:, :, 1] = WS
        n = np.sqrt(np.einsum("ij,ij->i", W, W))
        U = W / n[:, None]
        UW[:, :, 0] = U
        H = np.matmul(Z, UW).reshape(R, B, k, 2)  # student and teacher projections u.Z_bj, w*.Z_bj
        act = np.maximum(H[..., 0], 0.0)
        f = np.einsum("rbk,rk->rb", act, A)
        fs = np.einsum("rbk,rk->rb", np.maximum(H[..., 1], 0.0), AS)
        res = (f - fs) / B
        ga = np.einsum("rb,rbk->rk", res, act)
        C = (res[:, :, None] * A[:, None, :]) * (H[..., 0] > 0.0)
        gu = np.matmul(C.reshape(R, 1, B * k), Z)[:, 0, :]
        gw = (gu - np.einsum("ij,ij->i", U, gu)[:, None] * U) / n[:, None]
        W -= ew * gw
        A -= ea * ga
        return W, A

    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        W = np.array(WT0, dtype=np.float64)
        A = np.array(A0, dtype=np.float64)
        R, p = W.shape
        k = A.shape[1]
        Z = np.empty((R, B * k, p))
        UW = np.empty((R, p, 2))
        UW[:, :, 1] = WS
        for t in range(steps):
            ew, ea = (ew1, ea1) if t < T1 else (ew2, ea2)
            rng.standard_normal(out=Z)
            step(W, A, WS, AS, Z, ew, ea, UW)
        return W, A

    run.step = lambda W, A, WS, AS, Z, ew, ea: step(np.array(W), np.array(A), WS, AS, Z, ew, ea)
    return run


# ---------------------------------------------------------------------------------------------------- PyTorch SGD
def make_torch_sgd(batch_size: int, seed: int = 0, threads: int = 2):
    """:func:`make_numpy_sgd`'s step in PyTorch (CPU, float64, ``threads`` threads): ``Z`` drawn in place by
    ``torch.randn`` from a seeded ``torch.Generator`` each step, ``torch.bmm`` for both batched products."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingError(str(exc)) from None
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    B = batch_size

    def step(W, A, WS, AS, Z, ew, ea):
        R, p = W.shape
        k = A.shape[1]
        n = torch.sqrt((W * W).sum(1))
        U = W / n[:, None]
        H = torch.bmm(Z, torch.stack((U, WS), dim=2)).reshape(R, B, k, 2)
        act = torch.clamp(H[..., 0], min=0.0)
        f = torch.einsum("rbk,rk->rb", act, A)
        fs = torch.einsum("rbk,rk->rb", torch.clamp(H[..., 1], min=0.0), AS)
        res = (f - fs) / B
        ga = torch.einsum("rb,rbk->rk", res, act)
        C = (res[:, :, None] * A[:, None, :]) * (H[..., 0] > 0.0)
        gu = torch.bmm(C.reshape(R, 1, B * k), Z)[:, 0, :]
        gw = (gu - (U * gu).sum(1)[:, None] * U) / n[:, None]
        W.sub_(ew * gw)
        A.sub_(ea * ga)
        return W, A

    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        with torch.no_grad():
            W = torch.tensor(WT0, dtype=torch.float64)
            A = torch.tensor(A0, dtype=torch.float64)
            tWS = torch.tensor(WS, dtype=torch.float64)
            tAS = torch.tensor(AS, dtype=torch.float64)
            R, p = W.shape
            Z = torch.empty((R, B * A.shape[1], p), dtype=torch.float64)
            for t in range(steps):
                ew, ea = (ew1, ea1) if t < T1 else (ew2, ea2)
                torch.randn(Z.shape, generator=gen, dtype=torch.float64, out=Z)
                step(W, A, tWS, tAS, Z, ew, ea)
        return W.numpy(), A.numpy()

    def one_step(W, A, WS, AS, Z, ew, ea):
        with torch.no_grad():
            t = [torch.tensor(np.asarray(v), dtype=torch.float64) for v in (W, A, WS, AS, Z)]
            Wn, An = step(*t, ew, ea)
        return Wn.numpy(), An.numpy()

    run.step = one_step
    return run


# ---------------------------------------------------------------------------------------------------- JAX SGD
def make_jax_sgd(batch_size: int, seed: int = 0):
    """:func:`make_numpy_sgd`'s step in JAX (CPU, float64): ``jit`` of a ``lax.fori_loop`` over steps, ``Z`` drawn
    each step by ``jax.random.normal`` from a key split per step (the default generator), batched ``matmul``."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingError(str(exc)) from None
    B = batch_size

    def step(W, A, WS, AS, Z, ew, ea):
        R, p = W.shape
        k = A.shape[1]
        n = jnp.sqrt((W * W).sum(1))
        U = W / n[:, None]
        H = jnp.matmul(Z, jnp.stack((U, WS), axis=2)).reshape(R, B, k, 2)
        act = jnp.maximum(H[..., 0], 0.0)
        f = jnp.einsum("rbk,rk->rb", act, A)
        fs = jnp.einsum("rbk,rk->rb", jnp.maximum(H[..., 1], 0.0), AS)
        res = (f - fs) / B
        ga = jnp.einsum("rb,rbk->rk", res, act)
        C = (res[:, :, None] * A[:, None, :]) * (H[..., 0] > 0.0)
        gu = jnp.matmul(C.reshape(R, 1, B * k), Z)[:, 0, :]
        gw = (gu - (U * gu).sum(1)[:, None] * U) / n[:, None]
        return W - ew * gw, A - ea * ga

    @jax.jit
    def _run(W, A, WS, AS, key, steps, T1, ew1, ea1, ew2, ea2):
        R, p = W.shape
        shape = (R, B * A.shape[1], p)

        def body(t, carry):
            W, A, key = carry
            key, sub = jax.random.split(key)
            Z = jax.random.normal(sub, shape, dtype=jnp.float64)
            first = t < T1
            return (*step(W, A, WS, AS, Z, jnp.where(first, ew1, ew2), jnp.where(first, ea1, ea2)), key)

        return lax.fori_loop(0, steps, body, (W, A, key))

    state = {"key": jax.random.PRNGKey(seed)}

    def run(WT0, A0, WS, AS, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        W, A, state["key"] = _run(jnp.asarray(WT0), jnp.asarray(A0), jnp.asarray(WS), jnp.asarray(AS), state["key"],
                                  steps, T1, ew1, ea1, ew2, ea2)
        W.block_until_ready()
        return np.asarray(W), np.asarray(A)

    step_jit = jax.jit(step)

    def one_step(W, A, WS, AS, Z, ew, ea):
        Wn, An = step_jit(*(jnp.asarray(v) for v in (W, A, WS, AS, Z)), ew, ea)
        return np.asarray(Wn), np.asarray(An)

    run.step = one_step
    return run


# ---------------------------------------------------------------------------------------------------- reduced map
L_Q_NORMALIZED = 0.25 * (PI - 1.0) / PI  # deviation_gradient's L_Q at rho = 1


def reduced_loss(state, consts):
    """Loss of each run from its coordinates ``state = (u, r, x, y, z)`` (arrays ``(R,)``) and ``consts = (Q0, S0, P0,
    Ss, Qs, k)``: ``theory.closed_forms.gram_deviations`` then ``deviation_loss`` at ``rho = 1`` (NumPy)."""
    u, r, x, y, z = (np.asarray(v, dtype=np.float64) for v in state)
    Q0, S0, P0, Ss, Qs, k = consts
    rr = r * r
    n = np.sqrt(u * u + rr)
    c, s = u / n, r / n
    with np.errstate(divide="ignore", invalid="ignore"):
        omc = np.where(u > 0.0, rr / (n * (n + u)), 1.0 - c)
    phi = np.arctan2(r, u)
    Ds = S0 * x + k * y + Ss * z
    Dp = P0 * x + Ss * y + Qs * z
    Dq = Q0 * x * x + k * y * y + Qs * z * z + 2.0 * (S0 * x * y + P0 * x * z + Ss * y * z)
    return ((PI - 1.0) * Dq + Ds * Ds + 2.0 * (Qs + Dp) * (PI * omc + phi * c - s)) / (4.0 * PI)


def make_numpy_reduced():
    """The order-parameter map elementwise over runs in NumPy: ``(R,)`` arrays, one vectorized update per step
    (ufuncs with ``out=`` into preallocated temporaries).  ``run(state, consts, sched, steps)`` returns the final
    ``(u, r, x, y, z)``."""

    def run(state, consts, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        u, r, x, y, z = (np.array(v, dtype=np.float64) for v in state)
        Q0, S0, P0, Ss, Qs, k = consts
        R = u.shape[0]
        rr, n, c, s, omc, phi, Ds, Dp, Lc, g, alpha, tmp = (np.empty(R) for _ in range(12))
        two_lq = 2.0 * L_Q_NORMALIZED
        inv_2pi = 0.5 / PI
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in range(steps):
                ew, ea = (ew1, ea1) if t < T1 else (ew2, ea2)
                # angle: n, c, s, 1 - c (no cancellation for u > 0), phi
                np.multiply(r, r, out=rr)
                np.multiply(u, u, out=n)
                n += rr
                np.sqrt(n, out=n)
                np.divide(u, n, out=c)
                np.divide(r, n, out=s)
                np.add(n, u, out=tmp)
                tmp *= n
                np.divide(rr, tmp, out=omc)
                np.subtract(1.0, c, out=tmp)
                np.copyto(omc, tmp, where=u <= 0.0)
                np.arctan2(r, u, out=phi)
                # Ds = S0 x + k y + Ss z,  Dp = P0 x + Ss y + Qs z
                np.multiply(S0, x, out=Ds)
                np.multiply(k, y, out=tmp)
                Ds += tmp
                np.multiply(Ss, z, out=tmp)
                Ds += tmp
                np.multiply(P0, x, out=Dp)
                np.multiply(Ss, y, out=tmp)
                Dp += tmp
                np.multiply(Qs, z, out=tmp)
                Dp += tmp
                # L_c = (Qs + Dp)(phi - pi)/(2 pi); filter step: alpha = 1 + ew L_c c / n^2, beta = -ew L_c / n
                np.add(Qs, Dp, out=Lc)
                np.subtract(phi, PI, out=tmp)
                Lc *= tmp
                Lc *= inv_2pi
                np.multiply(Lc, c, out=alpha)
                np.multiply(n, n, out=tmp)
                alpha /= tmp
                alpha *= ew
                alpha += 1.0
                np.divide(Lc, n, out=tmp)  # -beta / ew
                u *= alpha
                tmp *= ew
                u -= tmp
                r *= alpha
                # head: L_Pa = (c phi + pi omc - s)/(2 pi);  x -= ea 2 L_Q x, y -= ea (2 L_Q y + L_S), z -= ...
                np.multiply(c, phi, out=g)
                omc *= PI
                g += omc
                g -= s
                g *= inv_2pi * ea  # ea L_Pa
                Ds *= inv_2pi * ea  # ea L_S
                shrink = 1.0 - ea * two_lq
                x *= shrink
                y *= shrink
                y -= Ds
                z *= shrink
                z -= g
        return u, r, x, y, z

    return run


def make_jax_reduced():
    """The order-parameter map in JAX (CPU, float64): ``jit`` of a ``lax.fori_loop`` over steps whose body is the
    elementwise update of the ``(R,)`` arrays (XLA fuses it into one loop over runs).  Same ``run`` as
    :func:`make_numpy_reduced`."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingError(str(exc)) from None

    @jax.jit
    def _run(state, consts, steps, T1, ew1, ea1, ew2, ea2):
        Q0, S0, P0, Ss, Qs, k = consts

        def body(t, st):
            u, r, x, y, z = st
            first = t < T1
            ew = jnp.where(first, ew1, ew2)
            ea = jnp.where(first, ea1, ea2)
            rr = r * r
            nn = u * u + rr
            n = jnp.sqrt(nn)
            c, s = u / n, r / n
            omc = jnp.where(u > 0.0, rr / (n * (n + u)), 1.0 - c)
            phi = jnp.arctan2(r, u)
            Ds = S0 * x + k * y + Ss * z
            Dp = P0 * x + Ss * y + Qs * z
            Lc = (Qs + Dp) * (phi - PI) * (0.5 / PI)
            alpha = 1.0 + ew * (Lc * c / nn)
            beta = -ew * Lc / n
            L_Pa = (c * phi + PI * omc - s) * (0.5 / PI)
            shrink = 1.0 - ea * (2.0 * L_Q_NORMALIZED)
            return (alpha * u + beta, alpha * r, shrink * x, shrink * y - ea * (0.5 / PI) * Ds,
                    shrink * z - ea * L_Pa)

        return lax.fori_loop(0, steps, body, state)

    def run(state, consts, sched, steps):
        T1, ew1, ea1, ew2, ea2 = sched
        out = _run(tuple(jnp.asarray(v) for v in state), tuple(jnp.asarray(v) for v in consts), steps, T1,
                   ew1, ea1, ew2, ea2)
        out[0].block_until_ready()
        return tuple(np.asarray(v) for v in out)

    return run
