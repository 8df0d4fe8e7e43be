"""PPR hard-pair mining: the pool rule, seed stability, A/B balance, never the target as negative."""

from __future__ import annotations

import numpy as np
import pytest

from recrepro.rl.mining import PolicyOutput, correct_letter, hard_negative_pool, mine_pairs

CANDS = tuple(f"item{k}" for k in range(1, 21))


def test_pool_rule_exact():
    ranking = [4, 9, 1, 17, 2, 3, 5, 6, 7, 8]
    assert hard_negative_pool(ranking, 4) == []  # target first: no pair
    assert hard_negative_pool(ranking, 17) == [4, 9, 1]  # rank 4: the 3 items above
    assert hard_negative_pool(ranking, 9) == [4]
    assert hard_negative_pool(ranking, 20) == ranking  # missing: the whole list
    assert hard_negative_pool(None, 4) is None  # invalid: skipped


def _outputs(n: int, seed: int = 0) -> list[PolicyOutput]:
    rng = np.random.default_rng(seed)
    outs = []
    for k in range(n):
        ranking = tuple(int(x) for x in rng.permutation(20)[:10] + 1)
        target = int(rng.integers(1, 21))
        outs.append(PolicyOutput(k, f"u{k}", CANDS, target, None if k % 7 == 0 else ranking))
    return outs


def test_mining_stats_and_no_negative_equals_target():
    outs = _outputs(400)
    pairs, stats = mine_pairs(outs, seed=5)
    assert stats["invalid_skipped"] == sum(1 for o in outs if o.ranking is None)
    assert stats["pairs"] + stats["target_first"] + stats["invalid_skipped"] == 400
    assert (pairs["negative_index"] != pairs["target_index"]).all()
    assert (pairs["negative_item"] != pairs["target_item"]).all()
    for _, p in pairs.iterrows():
        pool = hard_negative_pool(p["policy_ranking"], p["target_index"])
        assert p["negative_index"] in pool and p["pool_size"] == len(pool)
        assert p["target_rank"] == (list(p["policy_ranking"]).index(p["target_index"]) + 1
                                    if p["target_index"] in p["policy_ranking"] else 0)


def test_seed_stability():
    outs = _outputs(200)
    a, _ = mine_pairs(outs, seed=1)
    b, _ = mine_pairs(list(reversed(outs)), seed=1)  # input order does not matter
    c, _ = mine_pairs(outs, seed=2)
    assert a.equals(b)
    assert not a["negative_index"].equals(c["negative_index"]) or not a["a_is_target"].equals(c["a_is_target"])


def test_a_b_balance_close_to_half():
    pairs, stats = mine_pairs(_outputs(3000, seed=3), seed=9)
    assert len(pairs) > 2000
    assert abs(stats["a_is_target_share"] - 0.5) < 0.03


def test_correct_letter_for_both_directions():
    assert correct_letter(True, "more") == "A" and correct_letter(True, "less") == "B"
    assert correct_letter(False, "more") == "B" and correct_letter(False, "less") == "A"
    with pytest.raises(ValueError):
        correct_letter(True, "most")
