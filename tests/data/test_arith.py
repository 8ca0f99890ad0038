import numpy as np
import pytest

from longseq.data.arith import ArithTask, CharTokenizer, Problem, make_batch, verify


def test_worked_solution_is_correct_arithmetic():
    p = Problem((47, 85, 23))
    assert p.worked() == "S47+85=132;132+23=155>155"
    assert verify(p, p.worked())
    assert not verify(p, "G>156")
    assert not verify(p, "S47+85=132;132+23=155>15")
    assert not verify(p, "")


def test_guesses_cover_the_spread_uniformly():
    task, p = ArithTask(), Problem((10, 20, 30))
    rng = np.random.default_rng(0)
    vals = [int(p.guess(rng, task.spread)[2:]) for _ in range(17000)]
    counts = np.bincount(np.array(vals) - (60 - task.spread))
    assert len(counts) == 2 * task.spread + 1
    assert counts.min() > 800 and counts.max() < 1200


def test_train_and_test_problems_are_disjoint():
    task = ArithTask()
    train = set(task.sample_problems(3000, "train", seed=0))
    test = set(task.sample_problems(300, "test", seed=0))
    assert not train & test
    assert all(task.is_heldout(p) for p in test)
    with pytest.raises(ValueError, match="split"):
        task.sample_problems(1, "val", seed=0)


def test_batch_masks_prompt_and_padding():
    task, tok = ArithTask(), CharTokenizer()
    ids, labels = make_batch(task, tok, 8, seed=1, block_size=40)
    plen = len(tok.encode("10+10+10=", bos=True))
    assert (labels[:, :plen] == -100).all()
    for row, lab in zip(ids, labels, strict=True):
        n = int((lab != -100).sum())
        text = tok.decode(row[plen : plen + n])
        assert text[0] in "SG"
        assert (row[plen + n :] == tok.pad_token_id).all()


def test_tokenizer_roundtrip_and_errors():
    tok = CharTokenizer()
    ids = tok.encode("12+3=", bos=True, eos=True)
    assert tok.decode(ids) == "12+3="
    with pytest.raises(ValueError, match="vocabulary"):
        tok.encode("1*2")
