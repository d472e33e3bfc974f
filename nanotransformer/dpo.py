"""Direct preference optimisation (Rafailov et al. 2023): tune a model to prefer the chosen answer
of each (prompt, chosen, rejected) triple, anchored to a frozen reference, with no reward model
and no sampling.

    task = PreferenceTask(pairs, tokenizer, reference, block_size)   # reference log-probs computed once
    objective = DPO(policy, beta=0.1)           # the one Trainer trains it like any model
    Trainer(objective, task, config).fit()

The loss, for one triple (x prompt, y_w chosen, y_l rejected), with log pi(y | x) the summed
log-probability of the answer's tokens under the policy and pi_ref under the reference:

    z    = beta [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ]
    loss = -log sigmoid(z) = log(1 + e^-z)          averaged over the batch

Its backward, by hand. d loss / dz = -sigmoid(-z) (the sigmoid of how wrong the preference
still is: a pair already well separated contributes almost nothing), so

    d loss / d log pi(y_w) = -beta sigmoid(-z),   d loss / d log pi(y_l) = +beta sigmoid(-z)

and through the summed log-probabilities, at every answer position t with target y_t and
probabilities p_t = softmax(logits_t) (the cross-entropy gradient with the opposite sign):

    d log pi(y) / d logits_t = onehot(y_t) - p_t

so the policy's backward starts from dlogits = d loss / d log pi * (onehot - p) on the answer
tokens and 0 on the prompt (`GPT.backward_from_logits`).

With sft_weight > 0 the loss also gets sft_weight x the chosen answers' mean per-token
cross-entropy, -sum log pi(y_w) / (number of chosen tokens) (RPO, Pang et al. 2024; TRL's
rpo_alpha): DPO only fixes a *difference* of log-probabilities, and on near-identical pairs
(an answer and the same answer with two words swapped) it can lower both; the extra term keeps
the chosen answers likely. Its gradient adds -sft_weight / (number of chosen tokens) to
d loss / d log pi(y_w).

The reference's log-probabilities do not change during training, so `PreferenceTask` computes
them once, before the first step (as TRL's precompute_ref_log_probs): no second model runs in
the training loop. The batches put the B chosen rows first, then the B rejected rows, each
prompt + answer right-padded (a causal model's real tokens never see the padding).

Dimension legend: B pairs per batch, T time, V vocab, N pairs.

Does not: implement the IPO/KTO variants, label smoothing of preferences (cDPO), or sample
new answers from the policy (that is online RL).
"""
import numpy as np

from .layers import log_softmax_forward
from .params import ParamStore
from .tasks import IGNORE_INDEX, pad_rows
from .validation import check_array, check_number

# ----------------------------------------------------------------------------- the two layers


def sequence_logprob_forward(logits, targets, ignore_index=IGNORE_INDEX):
    """logits: (B, T, V), targets: (B, T) int (ignore_index where not counted)
    -> logp: (B,) the summed log-probability of each row's counted targets, cache"""
    check_array("logits", logits, ndim=3)
    check_array("targets", targets, shape=logits.shape[:2])
    logq, _ = log_softmax_forward(logits)  # (B, T, V)
    keep = targets != ignore_index  # (B, T)
    safe = np.where(keep, targets, 0)
    picked = np.take_along_axis(logq, safe[..., None], axis=-1)[..., 0]  # (B, T)
    logp = (picked * keep).sum(axis=1)
    return logp, (logq, safe, keep)


def sequence_logprob_backward(dout, cache):
    """dout: (B,) -> dlogits: (B, T, V)"""
    logq, safe, keep = cache
    # forward was: logp[b] = sum_t keep[b, t] log softmax(logits[b, t])[y[b, t]]
    #   ->  dlogits[b, t] = dout[b] keep[b, t] (onehot(y[b, t]) - softmax(logits[b, t]))
    dlogits = -np.exp(logq)
    np.put_along_axis(dlogits, safe[..., None], np.take_along_axis(dlogits, safe[..., None], axis=-1) + 1, axis=-1)
    return dlogits * (dout[:, None] * keep)[..., None].astype(logq.dtype)


def dpo_loss_forward(logp_w, logp_l, ref_w, ref_l, beta=0.1):
    """Policy and reference log-probabilities of the chosen (w) and rejected (l) answers, each
    (B,) -> loss: float (mean over the batch), cache. See the module docstring."""
    check_number("beta", beta, 0)
    for name, a in (("logp_l", logp_l), ("ref_w", ref_w), ("ref_l", ref_l)):
        check_array(name, a, shape=logp_w.shape)
    z = beta * ((logp_w - ref_w) - (logp_l - ref_l))  # (B,)
    loss = np.logaddexp(0.0, -z).mean()  # -log sigmoid(z), stable for large |z|
    return float(loss), (z, beta)


def dpo_loss_backward(dout, cache):
    """dout: float -> dlogp_w, dlogp_l, dref_w, dref_l: each (B,)"""
    z, beta = cache
    # forward was: loss = mean(log(1 + e^-z))  ->  dz = -sigmoid(-z) / B
    dz = -dout * np.exp(-np.logaddexp(0.0, z)) / z.size  # sigmoid(-z) = 1 / (1 + e^z)
    # forward was: z = beta ((logp_w - ref_w) - (logp_l - ref_l))
    return beta * dz, -beta * dz, -beta * dz, beta * dz


# ----------------------------------------------------------------------------- data


def preference_rows(tokenizer, triples):
    """[(prompt messages, chosen, rejected)] -> rows: [(x, y)] for the N chosen then the N
    rejected answers (x = prompt + answer ids less the last, y = IGNORE_INDEX on the prompt)."""
    from .chat import END, encode_chat

    end = tokenizer.special_tokens[END]
    rows = {"w": [], "l": []}
    for prompt, chosen, rejected in triples:
        p, _ = encode_chat(tokenizer, list(prompt), add_generation_prompt=True)
        for key, ans in (("w", chosen), ("l", rejected)):
            ids = np.asarray(p + tokenizer.encode_ordinary(ans) + [end], dtype=np.int64)
            y = ids[1:].copy()
            y[: len(p) - 1] = IGNORE_INDEX  # the prompt is given, not chosen
            rows[key].append((ids[:-1], y))
    return rows["w"] + rows["l"]


def pad_batch(rows, pad_id):
    """[(x, y)] -> x, y: (N, longest), right-padded with pad_id / IGNORE_INDEX."""
    x, _ = pad_rows([r[0] for r in rows], pad_id)
    y, _ = pad_rows([r[1] for r in rows], IGNORE_INDEX)
    return x, y


def sequence_logprobs(model, rows, pad_id, batch_size=64):
    """Summed answer log-probabilities (N,) float64 of `model` (no gradient) on rows [(x, y)]."""
    out = []
    for i in range(0, len(rows), batch_size):
        x, y = pad_batch(rows[i : i + batch_size], pad_id)
        logits, _ = model.forward(x)
        out.append(sequence_logprob_forward(logits.astype(np.float64), y)[0])
    return np.concatenate(out)


class PreferenceTask:
    """Batches for `DPO`: (x (2B, T), y (2B, T), ref (2B,)), chosen rows first, then rejected.

    splits: {"train": triples, "val": triples}, each triple (prompt messages, chosen, rejected).
    reference: the frozen model whose log-probabilities anchor the loss (computed here, once).
    A pair whose prompt + answer is longer than the block is left out (`dropped` counts them)."""

    perplexity = False

    def __init__(self, splits, tokenizer, reference, source="preferences"):
        from .chat import END

        self.pad_id, self.source, self.data = tokenizer.special_tokens[END], source, {}
        T = reference.config.block_size
        self.dropped = {}
        for split, triples in splits.items():
            rows = preference_rows(tokenizer, triples)
            n = len(triples)
            keep = [i for i in range(n) if max(len(rows[i][0]), len(rows[n + i][0])) <= T]
            self.dropped[split] = n - len(keep)  # a prompt + answer longer than the block: left out
            if not keep:
                raise ValueError(f"{source}: no {split} preference pair fits in the block size {T} ({n} given)")
            rows = [rows[i] for i in keep] + [rows[n + i] for i in keep]
            n = len(keep)
            ref = sequence_logprobs(reference, rows, self.pad_id)
            self.data[split] = (rows[:n], rows[n:], ref[:n], ref[n:])

    def get_batch(self, split, batch_size, rng):
        w, l, ref_w, ref_l = self.data[split]
        idx = rng.integers(0, len(w), size=batch_size)
        x, y = pad_batch([w[i] for i in idx] + [l[i] for i in idx], self.pad_id)
        return x, y, np.concatenate([ref_w[idx], ref_l[idx]])

    def micro_batches(self, batch, n):
        """The batch's pairs cut into n micro-batches of consecutive pairs (chosen rows first in
        each, like a batch) -> [(arrays, pairs)], for `train.micro_batches`. The DPO loss is a mean
        over pairs, so weighting by pairs is exact. The optional SFT term is a mean over the whole
        batch's n_tok chosen tokens: micro-batch j, weighted rows / B by the trainer, divides its
        sum by n_tok rows / B (its `sft_tokens`) instead of its own count, so that
        sum_j (rows / B) S_j / (n_tok rows / B) = S / n_tok exactly."""
        x, y, ref = batch
        B = len(x) // 2
        rows, out = B // n, []
        sft_tokens = max(1, int((y[:B] != IGNORE_INDEX).sum())) * rows / B
        for j in range(n):
            idx = np.r_[j * rows : (j + 1) * rows, B + j * rows : B + (j + 1) * rows]
            out.append(((x[idx], y[idx], ref[idx], sft_tokens), rows))
        return out


def preference_accuracy(model, task, split="val", beta=0.1):
    """How `model` ranks `split`'s pairs -> (prefers, margin_accuracy, mean_margin):
    prefers: the share with log pi(chosen) > log pi(rejected), the model's own preference (the
    same measure before and after training); margin_accuracy: the share with a positive DPO
    margin z (chosen gained more relative to the reference than rejected; 0 for the reference
    itself, where every z is 0); mean_margin: the mean z."""
    w, l, ref_w, ref_l = task.data[split]
    lw, ll = sequence_logprobs(model, w, task.pad_id), sequence_logprobs(model, l, task.pad_id)
    z = beta * ((lw - ref_w) - (ll - ref_l))
    return float((lw > ll).mean()), float((z > 1e-6).mean()), float(z.mean())


# ----------------------------------------------------------------------------- the objective


class DPO(ParamStore):
    """The DPO objective around a policy (a `model.GPT` or a `lora.LoRA`), shaped like a model for
    the one `train.Trainer`: it *is* the policy's parameter store (the same buffers, bound with
    `ParamStore.bind`), so the optimiser, clipping and checkpoint see the policy, and a saved
    DPO run is a checkpoint of the policy's kind."""

    def __init__(self, policy, beta=0.1, sft_weight=0.0):
        check_number("beta", beta, 0)
        if not (isinstance(sft_weight, (int, float)) and np.isfinite(sft_weight) and sft_weight >= 0):
            raise ValueError(f"sft_weight: expected a finite number >= 0, got {sft_weight!r}")
        self.policy, self.beta, self.sft_weight = policy, beta, float(sft_weight)
        self.specs, self.dtype, self.frozen = policy.specs, policy.dtype, policy.frozen
        self.bind(policy.params, policy.grads)
        self.decay_mask, self.kind, self.config, self.ops = policy.decay_mask, policy.kind, policy.config, policy.ops
        self._cache = None

    def config_dict(self):
        return self.policy.config_dict()

    def forward(self, x, y, ref, sft_tokens=None, *, train=False, rng=None):
        """x, y: (2B, T), ref: (2B,) reference log-probs, chosen rows first -> logits, loss: float.
        sft_tokens: what the SFT term divides by (default: the chosen answers' tokens; a
        micro-batch's share of its batch's, `PreferenceTask.micro_batches`)."""
        B = x.shape[0] // 2
        logits, _ = self.policy.forward(x, train=train, rng=rng)  # (2B, T, V)
        logp, lp_c = sequence_logprob_forward(logits, y)
        ref = ref.astype(logp.dtype)
        loss, loss_c = dpo_loss_forward(logp[:B], logp[B:], ref[:B], ref[B:], self.beta)
        n_tok = max(1, int((y[:B] != IGNORE_INDEX).sum())) if sft_tokens is None else sft_tokens
        if self.sft_weight:  # + the chosen answers' mean cross-entropy (module docstring)
            loss += self.sft_weight * float(-logp[:B].sum() / n_tok)
        self._cache = (lp_c, loss_c, n_tok) if train else None
        return logits, loss

    def backward(self):
        if self._cache is None:
            raise ValueError("backward: expected a preceding forward(..., train=True), got none")
        lp_c, loss_c, n_tok = self._cache
        self._cache = None
        dw, dl, _, _ = dpo_loss_backward(1.0, loss_c)
        # forward was: loss += sft_weight * (-sum(logp_w) / n_tok)  ->  dlogp_w -= sft_weight / n_tok
        dw = dw - self.sft_weight / n_tok
        dlogits = sequence_logprob_backward(np.concatenate([dw, dl]), lp_c)
        return self.policy.backward_from_logits(dlogits.astype(self.policy.dtype))


def load_preferences(path):
    """A JSONL file of {"prompt": text or messages, "chosen": text, "rejected": text} lines ->
    [(prompt messages, chosen, rejected)]; a bad line is a ValueError naming file and line."""
    from .skills import check_conversation, jsonl_records, read_text

    text = read_text(path, "'skills' or a JSONL file of preference pairs")
    out = []
    for n, rec in jsonl_records(path, text):
        if not isinstance(rec, dict) or set(rec) != {"prompt", "chosen", "rejected"}:
            got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise ValueError(f"{path}:{n}: expected an object with the keys chosen, prompt, rejected, got {got}")
        prompt = rec["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict) \
                or prompt[-1].get("role") != "user":  # fmt: skip
            raise ValueError(f"{path}:{n}: expected \"prompt\" to be a text or a list of messages ending with a user one")
        for key in ("chosen", "rejected"):
            if not isinstance(rec[key], str) or not rec[key]:
                raise ValueError(f"{path}:{n}: expected {key!r} to be a non-empty text")
        if rec["chosen"] == rec["rejected"]:
            raise ValueError(f"{path}:{n}: chosen and rejected are the same text")
        # the prompt + the chosen answer must be a well-formed conversation
        check_conversation(prompt + [{"role": "assistant", "content": rec["chosen"]}], f"{path}:{n}")
        out.append((tuple(prompt), rec["chosen"], rec["rejected"]))
    if not out:
        raise ValueError(f"{path}: expected at least one preference pair, found none")
    return out


def with_model_mistakes(model, tokenizer, triples, max_new_tokens=32):
    """Triples whose rejected answer is the model's own greedy answer wherever that answer is wrong
    (non-empty and not the chosen one) -> (triples, number replaced). The others keep theirs. Pairs
    built from the model's actual mistakes put DPO's weight where the model errs (on-policy
    negatives), instead of on wrong answers it would never give."""
    from .chat import answer

    out, n = [], 0
    for prompt, chosen, rejected in triples:
        got = answer(model, tokenizer, list(prompt), max_new_tokens=max_new_tokens).strip()
        if got and got != chosen:
            rejected, n = got, n + 1
        out.append((prompt, chosen, rejected))
    return out, n
