"""DPO (dpo.py): the summed answer log-probability and the DPO loss, gradient-checked in float64;
the objective on a whole GPT; preference batches and the preference file loader."""
import json

import numpy as np
import pytest

from nanotransformer.chat import CHAT_TOKENS
from nanotransformer.dpo import (DPO, PreferenceTask, dpo_loss_backward, dpo_loss_forward, load_preferences,
                                 preference_accuracy, preference_rows, sequence_logprob_backward,
                                 sequence_logprob_forward)
from nanotransformer.gradcheck import gradcheck, model_gradcheck
from nanotransformer.model import GPT, GPTConfig
from nanotransformer.tasks import IGNORE_INDEX
from nanotransformer.tokenizer import CharTokenizer


@pytest.mark.parametrize("T", [1, 5])
def test_sequence_logprob_gradcheck(rng, T):
    logits = rng.standard_normal((3, T, 7))
    targets = rng.integers(0, 7, size=(3, T))
    targets[0, 0] = IGNORE_INDEX
    r = gradcheck(sequence_logprob_forward, sequence_logprob_backward, logits, targets)
    assert r.ok, str(r)


def test_sequence_logprob_is_the_sum_of_the_counted_log_probabilities(rng):
    logits = rng.standard_normal((2, 4, 5))
    targets = np.array([[1, 2, IGNORE_INDEX, 0], [IGNORE_INDEX] * 4])
    logp, _ = sequence_logprob_forward(logits, targets)
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert np.isclose(logp[0], logq[0, 0, 1] + logq[0, 1, 2] + logq[0, 3, 0]) and logp[1] == 0.0


def test_dpo_loss_gradcheck_and_value(rng):
    a = [rng.standard_normal(6) * 3 for _ in range(4)]
    r = gradcheck(dpo_loss_forward, dpo_loss_backward, *a, beta=0.5)
    assert r.ok, str(r)
    z = 0.5 * ((a[0] - a[2]) - (a[1] - a[3]))
    loss, _ = dpo_loss_forward(*a, beta=0.5)
    assert np.isclose(loss, np.mean(-np.log(1 / (1 + np.exp(-z)))))
    big, _ = dpo_loss_forward(np.array([800.0]), np.array([-800.0]), np.zeros(1), np.zeros(1), beta=1.0)
    assert big == 0.0  # stable: no overflow for a huge margin
    with pytest.raises(ValueError, match="beta"):
        dpo_loss_forward(*a, beta=0)


def test_a_wrong_dpo_backward_fails_the_check(rng):
    a = [rng.standard_normal(4) for _ in range(4)]

    def wrong(dout, cache):  # the sign of the rejected answer's gradient flipped
        dw, dl, rw, rl = dpo_loss_backward(dout, cache)
        return dw, -dl, rw, rl

    assert not gradcheck(dpo_loss_forward, wrong, *a, beta=0.5).ok


# ----------------------------------------------------------------------------- on a model


@pytest.fixture
def tok():
    return CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ?+", special_tokens=CHAT_TOKENS)


TRIPLES = [([{"role": "user", "content": "what is 1 + 2?"}], "3", "4"),
           ([{"role": "user", "content": "what is 20 + 2?"}], "22", "12"),
           ([{"role": "user", "content": "abc?"}], "cba", "abc")]  # fmt: skip


def test_preference_rows_train_only_the_answers(tok):
    rows = preference_rows(tok, TRIPLES)
    assert len(rows) == 6
    for (x, y), ans in zip(rows, [t[1] for t in TRIPLES] + [t[2] for t in TRIPLES]):
        kept = y[y != IGNORE_INDEX]
        assert tok.decode(kept) == ans + "<|end|>"


@pytest.mark.parametrize("arch, sft_weight", [("gpt2", 0.0), ("llama", 0.0), ("gpt2", 0.7)])
def test_whole_model_dpo_gradcheck(tok, arch, sft_weight):
    cfg = GPTConfig.preset(arch, vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, d_model=8)
    policy = GPT(cfg, dtype=np.float64, seed=3)
    policy.params += np.random.default_rng(1).normal(0.0, 0.1, size=policy.params.shape)  # off the init
    ref = GPT(cfg, dtype=np.float64, seed=4)
    task = PreferenceTask({"train": TRIPLES, "val": TRIPLES}, tok, ref)
    x, y, r = task.get_batch("train", 3, np.random.default_rng(0))
    objective = DPO(policy, beta=0.5, sft_weight=sft_weight)
    errors = model_gradcheck(objective, lambda: objective.forward(x, y, r, train=True)[1], coords_per_tensor=8)
    assert set(errors) == set(policy.p)
    assert max(errors.values()) < 1e-6, errors


def test_dpo_objective_is_the_policys_store_and_training_raises_preference(tok):
    from nanotransformer.train import TrainConfig, Trainer

    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16)
    policy = GPT(cfg, seed=0)
    task = PreferenceTask({"train": TRIPLES, "val": TRIPLES}, tok, GPT(cfg, seed=0))
    acc0, m0, z0 = preference_accuracy(policy, task, beta=0.1)
    assert z0 == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    objective = DPO(policy, beta=0.1)
    assert objective.params is policy.params and objective.kind == "gpt"
    tr = Trainer(objective, task, TrainConfig(batch_size=3, max_steps=30, lr=3e-3, warmup=1, eval_interval=30,
                                              eval_iters=1), progress=False)  # fmt: skip
    tr.fit(log=False)
    acc1, m1, z1 = preference_accuracy(policy, task, beta=0.1)
    assert acc1 == 1.0 and m1 == 1.0 and z1 > 0.2 and m0 == 0.0
    assert tr.history["loss"][-1] < tr.history["loss"][0]


def test_load_preferences(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "x"}], "chosen": "c", "rejected": "d"}) + "\n")
    out = load_preferences(good)
    assert out[0] == (({"role": "user", "content": "hi"},), "a", "b") and len(out) == 2
    bad = {
        '{"prompt": "hi", "chosen": "a"}': "p.jsonl:1: expected an object with the keys",
        '{"prompt": "hi", "chosen": "a", "rejected": "a"}': "same text",
        '{"prompt": 3, "chosen": "a", "rejected": "b"}': "prompt",
        '{"prompt": "hi", "chosen": "", "rejected": "b"}': "'chosen' to be a non-empty text",
        "not json": "p.jsonl:1: invalid JSON",
        "": "at least one preference pair",
    }
    for text, msg in bad.items():
        good.write_text(text)
        with pytest.raises(ValueError, match=msg):
            load_preferences(good)
    with pytest.raises(ValueError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")


def test_with_model_mistakes_puts_the_models_wrong_answers_in_rejected(tok):
    from nanotransformer.dpo import with_model_mistakes
    from test_chat import ScriptedModel

    script = tok.encode_ordinary("4") + [tok.special_tokens["<|end|>"]]
    triples, n = with_model_mistakes(ScriptedModel(tok.vocab_size, script), tok, TRIPLES[:1] + [(TRIPLES[0][0], "4", "5")])
    assert n == 1 and triples[0][2] == "4"  # the model answered 4 to 1 + 2: that is the rejected answer now
    assert triples[1] == (TRIPLES[0][0], "4", "5")  # where it is right, the rule's wrong answer stays
    with pytest.raises(ValueError, match="sft_weight"):
        DPO(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, d_model=8)), sft_weight=-1)


@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
def test_dpo_grad_accum_keeps_pairs_together_and_equals_one_batch(tok, sft_weight):
    """PreferenceTask.micro_batches cuts pairs (chosen row i with rejected row B + i), so K
    micro-batches train exactly as one batch (float64; the DPO loss is a mean over pairs, the SFT
    term a mean over the whole batch's chosen tokens: each micro-batch divides its SFT sum by its
    share of them, not by its own count)."""
    from nanotransformer.train import TrainConfig, Trainer

    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16)
    task = PreferenceTask({"train": TRIPLES, "val": TRIPLES}, tok, GPT(cfg, dtype=np.float64, seed=0))
    x, y, ref = task.get_batch("train", 4, np.random.default_rng(0))
    parts = task.micro_batches((x, y, ref), 2)
    assert [n for _, n in parts] == [2, 2]
    np.testing.assert_array_equal(parts[1][0][0], x[[2, 3, 6, 7]])
    losses = []
    for K in (1, 2):
        policy = GPT(cfg, dtype=np.float64, seed=0)
        cfg_k = TrainConfig(batch_size=4, max_steps=4, lr=3e-3, warmup=1, eval_interval=4, eval_iters=1, grad_accum=K)
        tr = Trainer(DPO(policy, beta=0.1, sft_weight=sft_weight), task, cfg_k, progress=False)
        tr.fit(log=False)
        losses.append((np.array(tr.history["loss"]), policy.params.copy()))
    np.testing.assert_allclose(losses[1][0], losses[0][0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(losses[1][1], losses[0][1], rtol=0, atol=1e-12)
