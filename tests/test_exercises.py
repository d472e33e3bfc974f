"""The autograder passes every reference solution, fails a deliberately broken one with a
diagnosis that names the wrong tensor and index, and never raises on a student's mistake."""
import math

import numpy as np
import pytest

from nanotransformer import attention as A
from nanotransformer import hf
from nanotransformer import layers as L
from nanotransformer import optim as O
from nanotransformer import metrics as M
from nanotransformer.exercises import EXERCISES, check, exercise_help


def _adam_ref(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    O.adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)
    return p, m, v


def _adam_no_bias_correction(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p -= lr * weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return p - lr * m / (np.sqrt(v) + eps), m, v


def _adam_coupled(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    O.adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled=False)
    return p, m, v


def _adam(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, bc_m=True, bc_v=True, eps_inside=False, coupled=False,
          efficient=False):
    """AdamW as a student writes it, with one classic mistake (or the paper's efficient form) switched on."""
    if coupled:
        g = g + weight_decay * p  # Adam with L2
    else:
        p = p - lr * weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    if efficient:  # Kingma & Ba, section 2: alpha_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), eps-hat on sqrt(v)
        return p - lr * np.sqrt(1 - beta2**t) / (1 - beta1**t) * m / (np.sqrt(v) + eps), m, v
    m_hat = m / (1 - beta1**t) if bc_m else m
    v_hat = v / (1 - beta2**t) if bc_v else v
    return p - lr * m_hat / (np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps), m, v


def _adam_with(**switches):
    def f(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
        return _adam(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, **switches)

    f.__name__ = "adam_" + "_".join(switches)
    return f


def _merge(ids, pair, idx):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_overlapping(ids, pair, idx):
    # broken: replaces at every position, so 'aaa' -> two merges out of three symbols
    out = [idx if (a, b) == pair else a for a, b in zip(ids, ids[1:])]
    return out + ids[-1:] if ids and (len(ids) < 2 or (ids[-2], ids[-1]) != pair) else out


def _top_p(logits, p):
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, -1)
    sp = np.take_along_axis(probs, order, -1)
    keep_sorted = np.cumsum(sp, -1) - sp < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return np.where(keep, logits, -np.inf)


def _top_p_drops_crossing_token(logits, p):
    # broken: keeps only tokens whose *inclusive* cumulative mass is < p (one token too few)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, -1)
    keep_sorted = np.cumsum(np.take_along_axis(probs, order, -1), -1) < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return np.where(keep, logits, -np.inf)


def _top_p_reversed_argsort(logits, p):
    # correct: argsort ascending, reversed (ties come out in the other order: the cases have none)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(probs, -1)[..., ::-1]
    sp = np.take_along_axis(probs, order, -1)
    keep_sorted = np.cumsum(sp, -1) - sp < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return np.where(keep, logits, -np.inf)


def _top_p_fsum(logits, p):
    # correct: an exactly rounded running sum (math.fsum), row by row
    z = np.atleast_2d(logits)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.full_like(z, -np.inf)
    for r in range(len(z)):
        above = []
        for i in sorted(range(z.shape[1]), key=lambda i: -probs[r, i]):
            if math.fsum(above) < p:
                out[r, i] = z[r, i]
            above.append(probs[r, i])
    return out.reshape(logits.shape)


def _perplexity_by_product(p):
    with np.errstate(divide="ignore"):
        return float(np.prod(p) ** (-1 / len(p)))  # 0.1**400 underflows to 0 -> inf


def _numeric_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def _numeric_grad_forward_diff(f, x, h=1e-5):
    g = np.zeros_like(x)
    f0 = f()
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        g[i] = (f() - f0) / h  # one-sided: O(h) error instead of O(h^2)
        x[i] = old
    return g


def _attention_out(q, k, v, causal):
    return A.attention_forward(q, k, v, causal=causal)[0]


def _online_attention(q, k, v, causal):
    Tq, hs = q.shape
    Tk = k.shape[0]
    out = np.zeros((Tq, v.shape[1]))
    for i in range(Tq):
        m, l, o = -np.inf, 0.0, np.zeros(v.shape[1])
        for j in range(min(i + Tk - Tq + 1, Tk) if causal else Tk):
            s = (q[i] @ k[j]) / np.sqrt(hs)
            m_new = max(m, s)
            c, e = np.exp(m - m_new), np.exp(s - m_new)
            l, o, m = l * c + e, o * c + e * v[j], m_new
        out[i] = o / l
    return out


def _online_attention_all_queries(q, k, v, causal):
    # correct: one pass over the keys, every query at once
    Tq, hs = q.shape
    Tk = k.shape[0]
    m, l, o = np.full(Tq, -np.inf), np.zeros(Tq), np.zeros((Tq, v.shape[1]))
    for j in range(Tk):
        s = q @ k[j] / np.sqrt(hs)
        if causal:
            s = np.where(j <= np.arange(Tq) + Tk - Tq, s, -np.inf)
        m_new = np.maximum(m, s)
        c = np.where(np.isinf(m_new), 0.0, np.exp(m - m_new))
        e = np.where(np.isinf(m_new), 0.0, np.exp(s - m_new))
        l, o, m = l * c + e, o * c[:, None] + e[:, None] * v[j], m_new
    return o / l[:, None]


def _online_attention_variants(q, k, v, causal, through_transpose):
    # correct: scores through k.T element by element (no rows of k seen), or every key scored and
    # the masked ones skipped after their score
    Tq, hs = q.shape
    Tk = k.shape[0]
    kT = k.T
    out = np.zeros((Tq, v.shape[1]))
    for i in range(Tq):
        m, l, o = -np.inf, 0.0, np.zeros(v.shape[1])
        for j in range(Tk):
            s = (sum(q[i, d] * kT[d, j] for d in range(hs)) if through_transpose else q[i] @ k[j]) / np.sqrt(hs)
            if causal and j > i + Tk - Tq:
                continue
            m_new = max(m, s)
            c, e = np.exp(m - m_new), np.exp(s - m_new)
            l, o, m = l * c + e, o * c + e * v[j], m_new
        out[i] = o / l
    return out


def _two_pass_attention_loop(q, k, v, causal):
    # broken structure: all the scores first, then a second pass over the values
    Tq, hs = q.shape
    Tk = k.shape[0]
    out = np.zeros((Tq, v.shape[1]))
    for i in range(Tq):
        n = min(i + Tk - Tq + 1, Tk) if causal else Tk
        s = np.array([q[i] @ k[j] for j in range(n)]) / np.sqrt(hs)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[i] = sum(p[j] * v[j] for j in range(n))
    return out


def _lr_no_warmup(step, max_lr, warmup, max_steps, min_lr):
    return O.lr_schedule(step, max_lr, 0, max_steps, min_lr) if step < max_steps else min_lr


def _sinusoidal_swapped(n_pos, C):
    pe = L.sinusoidal_table(n_pos, C, dtype=np.float64)
    return pe[:, ::-1].copy()


def _ce_forward(logits, targets):
    return float(L.cross_entropy_forward(logits, targets)[0])


def _ce_forward_naive(logits, targets):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # overflows at +-1000
        return float(-np.mean(np.log(np.take_along_axis(p, targets[..., None], -1))))


def _bigram(ids, V):
    c = np.ones((V, V))
    for a, b in zip(ids, ids[1:]):
        c[a, b] += 1
    return c / c.sum(1, keepdims=True)


def _bigram_unsmoothed_cols(ids, V):
    c = np.ones((V, V))
    for a, b in zip(ids, ids[1:]):
        c[a, b] += 1
    return c / c.sum(0, keepdims=True)  # normalises the wrong axis


def _stats(ids):
    d = {}
    for pair in zip(ids, ids[1:]):
        d[pair] = d.get(pair, 0) + 1
    return d


def _stats_set(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}  # forgets to count


def _softmax_backward_diag_only(dout, cache):
    (p,) = cache
    return p * dout  # drops the -p p^T term of the Jacobian


def _attention_backward_no_scale(dout, cache):
    q, k, v, att, scale = cache
    dq, dk, dv = A.attention_backward(dout, cache)
    return dq / scale, dk / scale, dv


def _linear_backward_no_transpose_sum(dout, cache):
    dx, dw, db = L.linear_backward(dout, cache)
    return dx, dw, dout.reshape(-1, dout.shape[-1])[0]  # db from the first row only


def _layernorm_backward_two_terms(dout, cache):
    xhat, w, rstd = cache
    _, dw, db = L.layernorm_backward(dout, cache)
    dxhat = dout * w
    return rstd * (dxhat - dxhat.mean(-1, keepdims=True)), dw, db  # forgets the variance term


def _gelu_backward_relu(dout, cache):
    (x,) = cache
    return dout * (x > 0)


def _mlp_backward_swapped(dout, cache):
    dx, dw_fc, db_fc, dw_proj, db_proj = L.mlp_backward(dout, cache)
    return dx, dw_fc, db_fc, dw_proj, db_proj * 2


def _ce_backward_no_mean(dout, cache):
    probs, t, valid, n = cache
    return L.cross_entropy_backward(dout, cache) * n  # forgets to divide by the number of targets


def _embedding_backward_overwrite(dout, cache):
    ids, V = cache
    d = np.zeros((V, dout.shape[-1]))
    d[ids.reshape(-1)] += dout.reshape(-1, dout.shape[-1])  # repeated ids keep only one row
    return d


def _matmul_tiled(a, b, tile=16):
    M, K = a.shape
    out = np.zeros((M, b.shape[1]))
    for i in range(0, M, tile):
        for j in range(0, b.shape[1], tile):
            for k in range(0, K, tile):
                out[i : i + tile, j : j + tile] += a[i : i + tile, k : k + tile] @ b[k : k + tile, j : j + tile]
    return out


def _matmul_transposed_tile(a, b, tile=16):
    out = _matmul_tiled(a, b, tile)
    out[:2, :2] = out[:2, :2].T.copy()  # a tile written in the wrong orientation
    return out


def _matmul_loops(a, b, tile=16):
    # correct and tile-free: scalar loops take no block at all
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


def _matmul_row_panels(a, b, tile=16):
    # broken structure: tiles rows and columns but takes the whole reduction axis at once
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(0, a.shape[0], tile):
        for j in range(0, b.shape[1], tile):
            out[i : i + tile, j : j + tile] = a[i : i + tile] @ b[:, j : j + tile]
    return out


def _causal_mask_upper(T):
    return np.triu(np.ones((T, T), dtype=bool))


def _num_params(V, T, L, C):
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


def _tied(ids, dx_emb, xf, dlogits):
    V = dlogits.shape[-1]
    d = L.embedding_backward(dx_emb, (ids, V))
    return d + (xf.reshape(-1, xf.shape[-1]).T @ dlogits.reshape(-1, V)).T


def _tied_embedding_only(ids, dx_emb, xf, dlogits):
    return L.embedding_backward(dx_emb, (ids, dlogits.shape[-1]))  # forgets the LM head's use of wte


# --- chapters 11-14


def _pool_last(h, lengths):
    return h[np.arange(len(h)), lengths - 1]


def _logreg_loss(X, y, w, b, l2):
    z = X @ w + b
    p = 1 / (1 + np.exp(-z))
    loss = np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)) + 0.5 * l2 * (w @ w)
    r = (p - y) / len(y)
    return loss, X.T @ r + l2 * w, r.sum()


def _logreg_loss_no_l2_in_dw(X, y, w, b, l2):
    loss, _, db = _logreg_loss(X, y, w, b, l2)
    return loss, _logreg_loss(X, y, w, b, 0.0)[1], db  # forgets the l2 term of the gradient


def _allowed(ids, pad_id, causal):
    T = ids.shape[1]
    a = np.broadcast_to((ids != pad_id)[:, None, :], (len(ids), T, T))
    return a & np.tril(np.ones((T, T), bool)) if causal else a


def _corrupt(ids, u1, u2, rnd, mask_id, n_special, mask_prob):
    chosen = (ids >= n_special) & (u1 < mask_prob)
    out = np.where(chosen & (u2 < 0.8), mask_id, np.where(chosen & (u2 < 0.9), rnd, ids))
    return out, np.where(chosen, ids, -100)


def _teacher_forcing(ys, bos, eos, pad):
    T = max(len(y) for y in ys) + 1
    a, b = np.full((len(ys), T), pad), np.full((len(ys), T), -100)
    for i, y in enumerate(ys):
        a[i, : len(y) + 1], b[i, : len(y) + 1] = [bos] + y, y + [eos]
    return a, b


def _modified_precision(hyp, refs, n, clip=True):
    from collections import Counter

    g = lambda s: Counter(tuple(s[i : i + n]) for i in range(len(s) - n + 1))  # noqa: E731
    h, m = g(hyp), Counter()
    for r in refs:
        m |= g(r)
    return sum(min(c, m[k]) if clip else (c if m[k] else 0) for k, c in h.items()), max(0, len(hyp) - n + 1)


def _lcs_substring(a, b):  # broken: longest common *substring*
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            k = 0
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
            best = max(best, k)
    return best


# --- chapter 16


def _rmsnorm_backward_no_mean_term(dout, cache):
    xhat, w, rstd = cache
    _, dw = L.rmsnorm_backward(dout, cache)
    return rstd * (dout * w), dw  # forgets that rstd depends on x: drops -xhat * mean(dxhat * xhat)


def _rmsnorm_backward_layernorm_form(dout, cache):
    xhat, w, rstd = cache
    _, dw = L.rmsnorm_backward(dout, cache)
    g = dout * w
    # layer norm's three terms: the mean term belongs to a forward that subtracts the mean
    return rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)), dw


def _rmsnorm_backward_dw_from_x(dout, cache):
    xhat, w, rstd = cache
    dx, _ = L.rmsnorm_backward(dout, cache)
    return dx, (dout * xhat / rstd).reshape(-1, xhat.shape[-1]).sum(0)  # dw = sum(dout * x), not xhat


def _rope_backward_same_direction(dout, cache):
    cos, sin = cache
    return dout * cos + A.rotate_half(dout * sin)  # rotates by +m theta again instead of undoing it


def _rope_backward_cos_only(dout, cache):
    cos, sin = cache
    return dout * cos  # drops the rotate_half term


def _repeat_kv_backward_first_of_group(dout, cache):
    (n_rep,) = cache
    return dout[:, ::n_rep]  # the first query head of each group instead of the group's sum


def _repeat_kv_backward_interleaved(dout, cache):
    (n_rep,) = cache
    B, NH, T, hs = dout.shape
    return dout.reshape(B, n_rep, NH // n_rep, T, hs).sum(1)  # groups heads j, j + NKV, ...: not repeat's


def _repeat_kv_backward_mean(dout, cache):
    (n_rep,) = cache
    B, NH, T, hs = dout.shape
    return dout.reshape(B, NH // n_rep, n_rep, T, hs).mean(2)  # averages: the forward copies, it does not average


# name -> (reference solution, broken solution, substring the diagnosis must contain)
CASES = {
    "linear_backward": (L.linear_backward, _linear_backward_no_transpose_sum, "db["),
    "embedding_backward": (L.embedding_backward, _embedding_backward_overwrite, "dtable["),
    "softmax_backward": (L.softmax_backward, _softmax_backward_diag_only, "dx["),
    "attention_backward": (A.attention_backward, _attention_backward_no_scale, "dq["),
    "layernorm_backward": (L.layernorm_backward, _layernorm_backward_two_terms, "dx["),
    "gelu_backward": (L.gelu_backward, _gelu_backward_relu, "dx["),
    "mlp_backward": (L.mlp_backward, _mlp_backward_swapped, "db_proj["),
    "cross_entropy_backward": (L.cross_entropy_backward, _ce_backward_no_mean, "dlogits["),
    "cross_entropy_forward": (_ce_forward, _ce_forward_naive, "loss: expected"),
    "adamw_update": (_adam_ref, _adam_no_bias_correction, "after step t=1"),
    "lr_schedule": (O.lr_schedule, _lr_no_warmup, "lr[0]"),
    "sinusoidal_table": (lambda n, C: L.sinusoidal_table(n, C), _sinusoidal_swapped, "pe["),
    "causal_mask": (lambda T: np.tril(np.ones((T, T), bool)), _causal_mask_upper, "mask[0, 1]"),
    "numeric_grad": (_numeric_grad, _numeric_grad_forward_diff, "grad["),
    "bigram_probs": (_bigram, _bigram_unsmoothed_cols, "P["),
    "perplexity": (lambda p: math.exp(-np.mean(np.log(p))), lambda p: float(np.mean(1 / p)), "perplexity: expected"),
    "get_stats": (_stats, _stats_set, "counts[(1, 2)]: expected 2, got 1"),
    "merge": (_merge, _merge_overlapping, "ids["),
    "top_k_filter": (lambda z, k: np.where(z >= np.sort(z, -1)[..., -k, None], z, -np.inf),
                     lambda z, k: np.where(z > np.sort(z, -1)[..., -k, None], z, -np.inf), "logits["),
    "top_p_filter": (_top_p, _top_p_drops_crossing_token, "logits["),
    "matmul": (_matmul_tiled, _matmul_transposed_tile, "out["),
    "num_params": (_num_params, lambda V, T, L_, C: _num_params(V, T, L_, C) + V * C, "n_params: expected"),
    "tied_embedding_backward": (_tied, _tied_embedding_only, "dwte["),
    "attention_forward": (_online_attention, lambda q, k, v, c: _online_attention(q, k, v, not c), "out["),
    "bytes_to_unicode": (hf.bytes_to_unicode, lambda: {b: chr(b) for b in range(256)}, "mapping[0]"),
    "our_name": (hf.our_name, lambda k: k.removeprefix("transformer.").replace(".weight", ".w").replace(".bias", ".b"),
                 "expected 'wte'"),
    "pool_last": (_pool_last, lambda h, lengths: h[:, -1], "z["),
    "logistic_regression_loss": (_logreg_loss, _logreg_loss_no_l2_in_dw, "dw["),
    "attention_allowed": (_allowed, lambda ids, pad, causal: np.broadcast_to(np.tril(np.ones((ids.shape[1],) * 2, bool)) if causal else True, (len(ids), ids.shape[1], ids.shape[1])), "allowed["),
    "mask_tokens": (_corrupt, lambda *a: (_corrupt(*a)[0], a[0]), "targets["),
    "label_smoothing_cross_entropy_backward": (L.label_smoothing_cross_entropy_backward, lambda dout, cache: L.label_smoothing_cross_entropy_backward(dout, cache[:4] + (0.0,)), "dlogits["),
    "teacher_forcing": (_teacher_forcing, lambda ys, bos, eos, pad: (_teacher_forcing(ys, bos, eos, pad)[0],) * 2, "targets["),
    "modified_precision": (_modified_precision, lambda h, r, n: _modified_precision(h, r, n, clip=False), "matches"),
    "brevity_penalty": (lambda c, r: 1.0 if c >= r else (math.exp(1 - r / c) if c else 0.0), lambda c, r: math.exp(1 - r / c) if c else 0.0, "bp"),
    "lcs_length": (M.lcs_length, _lcs_substring, "lcs"),
    "rmsnorm_backward": (L.rmsnorm_backward, _rmsnorm_backward_no_mean_term, "dx["),
    "rope_backward": (A.rope_backward, _rope_backward_same_direction, "dx["),
    "repeat_kv_backward": (A.repeat_kv_backward, _repeat_kv_backward_first_of_group, "dx["),
}

# chapters 18 and 19
from nanotransformer import chat as _chat  # noqa: E402
from nanotransformer import dpo as _dpo  # noqa: E402
from nanotransformer.exercises.instruction_tuning import _shifted_the_wrong_way  # noqa: E402


def _encode_chat_with_encode(tok, messages, add_generation_prompt=False):
    # broken: message text through encode(allowed_special="all"): typed markers become control tokens
    sp, ids, train = tok.special_tokens, [], []
    for m in messages:
        body = tok.encode(m["content"], allowed_special="all") + [sp[_chat.END]]
        ids += [sp[_chat.ROLE_TOKENS[m["role"]]]] + body
        train += [False] + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids, train = ids + [sp[_chat.ASSISTANT]], train + [False]
    return ids, train


def _dpo_loss_backward_sigmoid_z(dout, cache):
    z, beta = cache
    dz = -dout / (1 + np.exp(-z)) / z.size  # sigmoid(z) where sigmoid(-z) belongs
    return beta * dz, -beta * dz, -beta * dz, beta * dz


CASES.update({
    "encode_chat": (_chat.encode_chat, _encode_chat_with_encode, "hint: a message's text is data"),
    "sft_pair": (_chat.sft_pair, _shifted_the_wrong_way, "hint: y[t] is the target of position t"),
    "dpo_loss_backward": (_dpo.dpo_loss_backward, _dpo_loss_backward_sigmoid_z, "dlogp_w["),
    "sequence_logprob_backward": (_dpo.sequence_logprob_backward,
                                  lambda dout, cache: -_dpo.sequence_logprob_backward(dout, cache), "dlogits["),
})


# chapter 17: the student's cache is (x, w, a, bm, s); the references written out from the forward
def _lora_backward(dout, cache):
    x, w, a, bm, s = cache
    x2, d2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    dxa = s * d2 @ bm.T  # (N, r)
    return (d2 @ w.T + dxa @ a.T).reshape(x.shape), x2.T @ dxa, s * (x2 @ a).T @ d2


def _num_lora_params(config, rank, targets):
    from nanotransformer.lora import LoRA
    from nanotransformer.model import GPT

    return LoRA(GPT(config, seed=None), rank, targets=targets, seed=None).num_trainable()


def _num_lora_params_c_attn_square(config, rank, targets):
    # broken: c_attn taken as (C, 3C) whatever the number of key/value heads
    from nanotransformer.lora import TARGETS

    C, n = config.d_model, 0
    lins = [lin for t in targets for lin in TARGETS.get(t, (t,))]
    for lin in lins:
        c_in, c_out = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 2 * config.d_ff if config.mlp == "swiglu" else config.d_ff),
                       "mlp.c_proj": (config.d_ff, C)}[lin]  # fmt: skip
        n += rank * (c_in + c_out)
    return n * config.n_layer


CASES.update({
    "lora_linear_backward": (_lora_backward, lambda d, c: (lambda g: (g[0], g[1] / c[4], g[2]))(_lora_backward(d, c)), "da["),
    "num_lora_params": (_num_lora_params, _num_lora_params_c_attn_square, "n_lora: expected"),
})


from nanotransformer import distributed as _dist  # noqa: E402


def _ring_reduce_scatter_only(arrays):
    """The ring's first half alone: rank r ends with the whole sum of chunk (r + 1) mod N only."""
    N = len(arrays)
    bufs = [np.array(a, dtype=np.float64).reshape(-1) for a in arrays]
    b = _dist.shard_bounds(bufs[0].size, N)
    for s in range(N - 1):
        sends = [(r - s) % N for r in range(N)]
        payload = [bufs[r][b[c] : b[c + 1]].copy() for r, c in enumerate(sends)]
        for r, c in enumerate(sends):
            bufs[(r + 1) % N][b[c] : b[c + 1]] += payload[r]
    return [x.reshape(np.shape(arrays[0])) for x in bufs]


CASES.update({
    "ring_allreduce": (_dist.ring_allreduce, _ring_reduce_scatter_only, "case '2 ranks, arrays of shape (6,)'\n  out[0]["),
})


# more typical mistakes, each reported at the tensor (and case) it breaks: name -> [(broken, where)]
MORE_BROKEN = {
    "rmsnorm_backward": [(_rmsnorm_backward_layernorm_form, "dx["),
                         (_rmsnorm_backward_dw_from_x, "dw[")],
    "rope_backward": [(_rope_backward_cos_only, "dx[")],
    "repeat_kv_backward": [(_repeat_kv_backward_interleaved, "case 'x (2, 2, 3, 4): NKV 2, n_rep 3 (NH 6)'\n  dx["),
                           (_repeat_kv_backward_mean, "dx[")],
}


# correct answers written another way, which must pass too: name -> [solution]
MORE_CORRECT = {
    "adamw_update": [_adam_with(efficient=True)],
    "top_p_filter": [_top_p_reversed_argsort, _top_p_fsum],
    "matmul": [_matmul_loops, lambda a, b, tile: _matmul_tiled(a, b, tile)],
    "attention_forward": [_online_attention_all_queries,
                          lambda q, k, v, c: _online_attention_variants(q, k, v, c, through_transpose=True),
                          lambda q, k, v, c: _online_attention_variants(q, k, v, c, through_transpose=False)],
}

# the classic mistakes, each reported at the output it breaks and, where it has one, with its hint:
# name -> [(broken, substrings the diagnosis must contain)]
TYPICAL_BUGS = {
    "adamw_update": [
        (_adam_with(bc_m=False, bc_v=False), ["after step t=1: ", "p[", "hint: this is Adam without bias correction"]),
        (_adam_with(bc_m=False), ["after step t=1: ", "p[", "hint: only v is bias-corrected"]),
        (_adam_with(bc_v=False), ["after step t=1: ", "p[", "hint: only m is bias-corrected"]),
        (_adam_with(eps_inside=True), ["tiny gradients", "p[", "hint: eps is inside the square root"]),
        (_adam_with(coupled=True), ["AdamW, beta2=0.999, weight_decay=0.5", "m[", "hint: the decay went into the gradient"]),
        (lambda *a, **k: _adam_ref(*a, **k)[:2], ["expected a tuple (p, m, v) of 3 arrays, got a tuple of 2"]),
    ],
    "perplexity": [(_perplexity_by_product, ["product underflows", "perplexity: expected +1.0", "got +inf"])],
    "causal_mask": [(lambda T: np.tril(np.ones((T, T), dtype=int)), ["mask: expected a bool array", "got dtype int"])],
    "attention_allowed": [(lambda ids, pad, causal: _allowed(ids, pad, causal).astype(np.int64),
                           ["allowed: expected a bool array", "got dtype int64"])],
    "linear_backward": [(lambda dout, cache: L.linear_backward(dout, cache[:2] + (True,)),
                         ["no bias", "db: expected None, got ndarray of shape (6,)"])],
    "matmul": [(lambda a, b, tile: a @ b, ["right values", "got a product on a block of a of shape (4, 4)"]),
               (lambda a, b, tile: np.dot(a, b), ["got a product on a block of a of shape (4, 4)"]),
               (_matmul_row_panels, ["got a product on a block of a of shape (2, 4)"])],
    "attention_forward": [(_attention_out, ["right values", "got an operation on a block of k"]),
                          (_two_pass_attention_loop, ["got v[0] read when the last key read was k[5]"])],
    "merge": [(lambda ids, pair, idx: " ".join(map(str, _merge(ids, pair, idx))), ["ids: expected a list of ints, got str"]),
              (lambda ids, pair, idx: [str(i) for i in _merge(ids, pair, idx)], ["ids[0]: expected an int, got str '5'"])],
    "teacher_forcing": [(lambda ys, bos, eos, pad: (_teacher_forcing(ys, bos, eos, pad)[0],) * 2,
                         ["targets[0, 0]: expected 5, got 1", "targets[0, 3]: expected 2, got 7", "of 4 entries are off"])],
    "mask_tokens": [(lambda *a: (_corrupt(*a)[0], a[0]), ["targets[0, 0]: expected -100, got 1", "entries are off"])],
}


def test_every_exercise_has_a_case():
    # derived from the package: a newly registered exercise without a reference and a bug fails here
    assert sorted(set(EXERCISES) - set(CASES)) == [], "exercises without a (reference, broken, where) entry in CASES"
    assert sorted(set(CASES) - set(EXERCISES)) == [], "CASES for exercises the package does not register"
    assert set(MORE_CORRECT) | set(TYPICAL_BUGS) <= set(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_stub_fails_as_not_implemented(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError  # your code

    assert check(name, stub) is False
    assert capsys.readouterr().out.startswith(f"{name}: not implemented yet"), name


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_reference_passes(name, capsys):
    assert name in CASES, f"{name}: no entry in CASES"
    assert check(name, CASES[name][0]) is True, capsys.readouterr().out
    assert capsys.readouterr().out.startswith(f"{name}: passed")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_broken_fails_with_a_located_diagnosis(name, capsys):
    assert name in CASES, f"{name}: no entry in CASES"
    _, broken, where = CASES[name]
    assert check(name, broken) is False
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: FAILED"), out
    assert where in out, out
    assert "expected" in out and "got" in out, out


@pytest.mark.parametrize("name", sorted(MORE_CORRECT))
def test_other_correct_forms_pass(name, capsys):
    for solution in MORE_CORRECT[name]:
        assert check(name, solution) is True, capsys.readouterr().out
        capsys.readouterr()


@pytest.mark.parametrize("name", sorted(TYPICAL_BUGS))
def test_typical_bugs_fail_with_their_diagnosis(name, capsys):
    for broken, wants in TYPICAL_BUGS[name]:
        assert check(name, broken) is False
        out = capsys.readouterr().out
        assert out.startswith(f"{name}: FAILED"), out
        for w in wants:
            assert w in out, (w, out)


def test_a_small_difference_prints_with_enough_digits(capsys):
    check("adamw_update", _adam_with(eps_inside=True))  # relative error ~1e-7
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "relative error" in ln)
    expected, got = line.split("expected ")[1].split(", got ")[0], line.split(", got ")[1].split(",")[0]
    assert expected != got, line


def test_matmul_and_attention_say_when_only_the_result_was_checked(capsys):
    assert check("matmul", lambda a, b, tile: np.asarray(a) @ np.asarray(b)) is True
    assert "only the result was checked" in capsys.readouterr().out
    assert check("matmul", _matmul_tiled) is True
    assert "only the result" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["layernorm_backward", "attention_backward", "linear_backward"])
def test_float_diagnosis_reports_relative_error_and_count(name, capsys):
    check(name, CASES[name][1])
    out = capsys.readouterr().out
    assert "relative error" in out and "entries are off" in out, out


def test_stub_prints_not_implemented(capsys):
    def layernorm_backward(dout, cache):
        raise NotImplementedError  # your code

    assert check("layernorm_backward", layernorm_backward) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(MORE_BROKEN))
def test_llama_typical_mistakes_fail_with_a_located_diagnosis(name, capsys):
    for broken, where in MORE_BROKEN[name]:
        assert check(name, broken) is False, broken.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"{name}: FAILED") and where in out, out
        assert "relative error" in out and "entries are off" in out, out


@pytest.mark.parametrize("name", ["rmsnorm_backward", "rope_backward", "repeat_kv_backward"])
def test_llama_stubs_print_not_implemented(name, capsys):
    def stub(dout, cache):
        raise NotImplementedError  # your code (as in notebooks/16-llama.ipynb)

    assert check(name, stub) is False
    assert capsys.readouterr().out.startswith(f"{name}: not implemented yet")


def test_crash_is_reported_not_raised(capsys):
    def bad(dout, cache):
        return dout @ np.ones((99, 2))

    assert check("layernorm_backward", bad) is False
    out = capsys.readouterr().out
    assert "your function raised ValueError" in out and "test_exercises.py" in out


def test_wrong_shape_and_count_and_none(capsys):
    assert not check("linear_backward", lambda dout, cache: L.linear_backward(dout, cache)[:2])
    assert "expected 3 outputs (dx, dw, db), got 2" in capsys.readouterr().out
    assert not check("softmax_backward", lambda dout, cache: dout[..., :-1])
    assert "dx: expected shape" in capsys.readouterr().out
    assert not check("gelu_backward", lambda dout, cache: None)
    assert "dx: got None" in capsys.readouterr().out


def test_nan_is_located(capsys):
    def nan_at_corner(dout, cache):
        dx = L.softmax_backward(dout, cache)
        dx[(0,) * dx.ndim] = np.nan
        return dx

    assert not check("softmax_backward", nan_at_corner)
    assert "dx[0]: expected" in capsys.readouterr().out


def test_numeric_grad_must_restore_x(capsys):
    def leaves_x_nudged(f, x, h=1e-5):
        g = _numeric_grad(f, x, h)
        x.reshape(-1)[1] += h
        return g

    assert not check("numeric_grad", leaves_x_nudged)
    assert "x[1] was changed" in capsys.readouterr().out


def test_adam_coupled_decay_fails_only_with_decay(capsys):
    assert not check("adamw_update", _adam_coupled)
    assert "on case 'AdamW, beta2=0.999, weight_decay=0.5'" in capsys.readouterr().out


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="name: expected one of"):
        check("no_such_exercise", lambda: None)


def test_exercise_help_lists_all(capsys):
    exercise_help(None)
    out = capsys.readouterr().out
    assert all(n in out for n in EXERCISES)
