"""Majority vote over the inverted views of each test input: count identical grids (by hash), rank by
vote count, break ties by mean halting confidence, keep the top k. This is the official evaluator's ranking
(confidence summed in view order, then divided; exact ties keep the grid seen first); invalid views, which
the official crop makes an empty grid, cast no vote here."""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def vote_topk(seg_starts, hashes, valid, conf, k, top_rows, top_counts, top_conf):
    """Views of test input g are rows seg_starts[g]:seg_starts[g+1]. Writes, per input, the row index of
    one representative of each of the k best distinct grids (-1 where fewer exist), its vote count and
    mean confidence. Equal (count, confidence) keeps the grid seen first, so results are deterministic."""
    G = seg_starts.shape[0] - 1
    for g in range(G):
        top_rows[g, :] = -1
        top_counts[g, :] = 0
        top_conf[g, :] = 0.0
        s, e = seg_starts[g], seg_starts[g + 1]
        m = 0
        idx = np.empty(e - s, dtype=np.int64)
        for r in range(s, e):
            if valid[r]:
                idx[m] = r
                m += 1
        if m == 0:
            continue
        idx = idx[:m]
        order = np.argsort(hashes[idx], kind="mergesort")  # stable: ties keep row order
        i = 0
        while i < m:
            first = idx[order[i]]
            hv = hashes[first]
            cnt = 0
            csum = 0.0
            j = i
            while j < m and hashes[idx[order[j]]] == hv:
                cnt += 1
                csum += conf[idx[order[j]]]
                j += 1
            mean = csum / cnt
            # insertion into the running top-k
            for slot in range(k):
                better = (top_rows[g, slot] < 0 or cnt > top_counts[g, slot]
                          or (cnt == top_counts[g, slot] and mean > top_conf[g, slot])
                          or (cnt == top_counts[g, slot] and mean == top_conf[g, slot] and first < top_rows[g, slot]))
                if better:
                    for t in range(k - 1, slot, -1):
                        top_rows[g, t] = top_rows[g, t - 1]
                        top_counts[g, t] = top_counts[g, t - 1]
                        top_conf[g, t] = top_conf[g, t - 1]
                    top_rows[g, slot] = first
                    top_counts[g, slot] = cnt
                    top_conf[g, slot] = mean
                    break
            i = j
