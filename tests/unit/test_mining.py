"""Mining never returns a known positive nor a candidate above margin x the positive's score (property test)."""

from __future__ import annotations

import numpy as np
import pytest

from nvembed.mining import mine_hard_negatives, select_negatives


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("index_kind", ["flat", "hnsw"])
def test_mining_property(seed, index_kind):
    rng = np.random.default_rng(seed)
    n_docs, n_q, dim = 300, 40, 16
    docs = _unit(rng.normal(size=(n_docs, dim))).astype(np.float32)
    queries = _unit(rng.normal(size=(n_q, dim))).astype(np.float32)
    chosen = rng.choice(n_docs, 2 * n_q, replace=False)
    positives, planted = chosen[:n_q], chosen[n_q:]
    for i, (p, dup) in enumerate(zip(positives, planted, strict=True)):
        docs[p] = _unit(queries[i] + 0.1 * rng.normal(size=dim))
        docs[dup] = _unit(queries[i] + 0.05 * rng.normal(size=dim))  # an unlabelled near-copy: a false negative
    known = [{int(p), int(rng.integers(0, n_docs))} for p in positives]
    table = {f"d{i}": v for i, v in enumerate(docs)}
    qtable = {f"q{i}": v for i, v in enumerate(queries)}
    res = mine_hard_negatives(
        lambda t: np.stack([qtable[x] for x in t]),
        lambda t: np.stack([table[x] for x in t]),
        [f"q{i}" for i in range(n_q)],
        [int(p) for p in positives],
        [f"d{i}" for i in range(n_docs)],
        known_positives=known,
        k=7,
        margin=0.95,
        depth=50,
        index_kind=index_kind,
        show_progress=False,
    )
    for i in range(n_q):
        pos_score = float(queries[i] @ docs[positives[i]])
        assert len(res.negatives[i]) > 0
        assert int(planted[i]) not in res.negatives[i] or queries[i] @ docs[planted[i]] <= 0.95 * pos_score
        for c in res.negatives[i]:
            assert c not in known[i]
            assert float(queries[i] @ docs[c]) <= 0.95 * pos_score + 1e-6
        assert res.scores[i] == sorted(res.scores[i], reverse=True)


def test_select_negatives_top_k_and_sampling():
    cands = np.array([5, 1, 2, 3, 4, -1])
    scores = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.0])
    assert select_negatives(cands, scores, 0.95, {3}, k=2)[0] == [1, 2]  # 5 is above 0.95*0.95, 3 is a positive
    sampled, _ = select_negatives(cands, scores, 0.95, set(), k=2, sample_from_top=4)
    assert len(sampled) == 2 and set(sampled) <= {1, 2, 3, 4}


def test_corpus_encoded_in_progress_pieces_and_shards():
    """Pieces (for the progress bar) and shards change neither the vectors nor their order in the index."""
    from nvembed.mining import encode_corpus_into_index

    rng = np.random.default_rng(0)
    vecs = _unit(rng.normal(size=(23, 8))).astype(np.float32)
    table = {f"d{i}": v for i, v in enumerate(vecs)}
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.stack([table[t] for t in texts])

    index = encode_corpus_into_index(encode, list(table), shard_size=10, show_progress=False, progress_step=4)
    assert calls == [4, 4, 2, 4, 4, 2, 3]  # shards of 10, 10, 3, each in pieces of at most 4
    np.testing.assert_array_equal(index.reconstruct_n(0, 23), vecs)
