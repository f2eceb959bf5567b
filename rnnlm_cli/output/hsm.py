"""The hierarchical softmax output layer (`model.output: hsm`; Morin & Bengio 2005, as in
word2vec and faster-rnnlm): the V words are the leaves of a binary Huffman tree built from the
training frequencies; each of its V − 1 inner nodes n has a vector v_n and a bias b_n, and

    P(w | h) = Π_{d < L_w} σ(s_d · (h · v_{n_d} + b_{n_d})),   s_d = +1 for code c_d = 0, −1 for c_d = 1

over the inner nodes n_0 (the root) … n_{L_w − 1} of w's path and the branch c_d it takes at
each. As σ(z) + σ(−z) = 1 at every node, the leaves' probabilities sum to one: exact and
normalized, with L_w ≈ log₂(1/P(w)) products per target instead of V. The loss is

    J_t = −log P(w_t | h_t) = Σ_d softplus(−s_d z_d),   z_d = h_t · v_{n_d} + b_{n_d}
    ∂J_t/∂z_d = σ(z_d) − (1 − c_d)                                           (eq. H1)
    ∂J/∂h_t = Σ_d ∂J_t/∂z_d · v_{n_d}                                         (eq. H2)
    ∂J/∂v_n = Σ_{(t, d): n_d = n} ∂J_t/∂z_d · h_t,   ∂J/∂b_n = Σ ∂J_t/∂z_d    (eq. H3)

(docs/derivation.md, "Hierarchical softmax"). A window's paths are padded to the longest one
with a mask; the node vectors of all its (position, depth) pairs are gathered once into an
(M, D, H) array, so that z and ∂J/∂h are one batched product each. The nodes are numbered
breadth first, so the first TOP_NODES (near the root, on nearly every path) take their gradient
as one matrix product and only the deeper ones are summed pair by pair; the gradient of the
vectors and biases is the rows of the nodes the window touched (layers.SparseRows).

| key | shape | role |
| `output.node_vectors` | (V − 1, H) | row n is inner node n's vector v_n (node 0 the root) |
| `output.node_b` | (V − 1,) | node biases |
| `output.path_nodes` | (V, D) int64 | w's path, root first; 0 past its length; not trained |
| `output.path_codes` | (V, D) int64 | the branch (0 or 1) w's path takes at each node; 0 past its length |
| `output.path_lengths` | (V,) int64 | L_w, the nodes on w's path (1 … D) |

D = max_depth(V) = max(32, 2⌈log₂ V⌉); a Huffman tree deeper than that (the weights would have
to be as skewed as the Fibonacci numbers) is built from smoothed counts instead.
"""

import collections
import functools
import heapq

import numpy as np

from .. import layers, parallel
from ..errors import UserError

TIED = None  # node vectors are not word vectors: nothing to tie to the embedding
VECTORS, BIAS = "output.node_vectors", "output.node_b"
NODES, CODES, LENGTHS = "output.path_nodes", "output.path_codes", "output.path_lengths"
BUFFERS = (NODES, CODES, LENGTHS)
SPARSE_AXES = {VECTORS: 0, BIAS: 0}  # a window's gradient: the rows of the nodes on its targets' paths
WORD_AXES = {}  # no trained array is indexed by word: the node vectors follow the tree, rebuilt for a new vocabulary
TOP_NODES = 128  # nodes nearest the root whose gradient is one (M, TOP_NODES) matrix product
LIGHT_BLOCK = 4 * parallel.MIN_BLOCK  # a gather and a multiply-add per element: a thread needs more of them


def max_depth(vocab_size):
    """D = max(32, 2⌈log₂ V⌉): the longest path stored (0 for a one-word vocabulary). A Huffman
    path that long needs weights as skewed as the Fibonacci numbers up to F(D + 2), 5.7 million
    for D = 32."""
    return max(32, 2 * (vocab_size - 1).bit_length()) if vocab_size > 1 else 0


def param_shapes(model_cfg, vocab_size):
    H, V, D = model_cfg.hidden_dim, vocab_size, max_depth(vocab_size)
    return {VECTORS: (V - 1, H), BIAS: (V - 1,), NODES: (V, D), CODES: (V, D), LENGTHS: (V,)}


def init_array(key, shape, model_cfg, rng, dtype, counts=None):
    """The tree's paths from the train frequencies `counts` (V,); node vectors uniform in
    ±init_scale, biases zero."""
    if key in BUFFERS:
        return huffman_paths(counts, max_depth(len(counts)))[BUFFERS.index(key)]
    if key == BIAS:
        return np.zeros(shape, dtype=dtype)
    return rng.uniform(-model_cfg.init_scale, model_cfg.init_scale, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# The tree


def huffman_children(weights):
    """Huffman's construction over weights (V,) of positive integers -> children (V − 1, 2)
    int64: inner node n's child on branch 0 and on branch 1, an id k < V − 1 being inner node k
    and k ≥ V − 1 the word k − (V − 1). The two lightest subtrees merge first, ties going to the
    lower word id or the earlier merge (deterministic); the heavier of the two takes branch 0.
    Inner nodes are numbered breadth first from the root (0), branch 0 before branch 1."""
    V = len(weights)
    heap = [(int(w), i) for i, w in enumerate(weights)]  # (weight, id): words 0..V-1, merge k is V + k
    heapq.heapify(heap)
    merges = []
    while len(heap) > 1:
        w_light, light = heapq.heappop(heap)
        w_heavy, heavy = heapq.heappop(heap)
        merges.append((heavy, light))
        heapq.heappush(heap, (w_light + w_heavy, V + len(merges) - 1))
    order, queue = {}, collections.deque([V + len(merges) - 1] if merges else [])
    while queue:  # breadth first from the root, the last merge
        node = queue.popleft()
        order[node] = len(order)
        queue.extend(c for c in merges[node - V] if c >= V)
    by_number = sorted(order, key=order.get)
    return np.array([[order[c] if c >= V else V - 1 + c for c in merges[node - V]] for node in by_number],
                    dtype=np.int64).reshape(len(merges), 2)


def tree_paths(children, vocab_size):
    """children (V − 1, 2) as huffman_children gives them -> (nodes, codes, lengths): nodes and
    codes (V, depth) the inner nodes on each word's path from the root and the branch taken at
    each (0 past the path's end), lengths (V,)."""
    V = vocab_size
    parent, branch = np.zeros(2 * V - 1, np.int64), np.zeros(2 * V - 1, np.int64)
    parent[children.reshape(-1)] = np.repeat(np.arange(V - 1), 2)
    branch[children[:, 1]] = 1
    up_nodes, up_codes = [], []
    current = np.arange(V - 1, 2 * V - 1)  # the words' leaves; walk up to the root (node 0)
    lengths = np.zeros(V, np.int64)
    while V > 1 and np.any(current != 0):
        live = current != 0
        up_nodes.append(np.where(live, parent[current], 0))
        up_codes.append(np.where(live, branch[current], 0))
        lengths += live
        current = up_nodes[-1]
    depth = len(up_nodes)
    nodes, codes = np.zeros((V, depth), np.int64), np.zeros((V, depth), np.int64)
    if depth:
        k = np.arange(depth)
        col = lengths[:, None] - 1 - k  # the k-th node up from the leaf sits at column L − 1 − k
        w, kk = np.nonzero(col >= 0)
        nodes[w, col[w, kk]] = np.stack(up_nodes, axis=1)[w, kk]
        codes[w, col[w, kk]] = np.stack(up_codes, axis=1)[w, kk]
    return nodes, codes, lengths


def huffman_paths(counts, depth):
    """The Huffman tree of counts (V,) + 1 as padded paths (nodes (V, depth), codes (V, depth),
    lengths (V,)). If it is deeper than `depth`, the counts are smoothed by the smallest power of
    two 2^k that makes it fit (found by bisection on k; flatter weights make a shallower tree, and
    equal weights, the last resort, one of depth ⌈log₂ V⌉ ≤ depth). Built once for the three
    arrays init_array asks for (copies of it)."""
    return tuple(a.copy() for a in _huffman_paths(np.asarray(counts, np.int64).tobytes(), depth))


@functools.lru_cache(maxsize=1)
def _huffman_paths(counts_bytes, depth):
    weights = [int(c) + 1 for c in np.frombuffer(counts_bytes, np.int64)]  # Python ints: no overflow
    V = len(weights)

    def build(smoothing):
        return tree_paths(huffman_children([w + smoothing for w in weights]), V)
    paths = build(0)
    if paths[0].shape[1] > depth:  # bisect on the exponent k of the smoothing 2^k (≤ 8 more builds)
        low, high = -1, max(weights).bit_length() + 1  # 2^high: weights within a factor of two
        fits = build(2 ** high)
        while high - low > 1:
            k = (low + high) // 2
            trial = build(2 ** k) if k >= 0 else paths
            if trial[0].shape[1] <= depth:
                high, fits = k, trial
            else:
                low = k
        paths = fits if fits[0].shape[1] <= depth else tree_paths(huffman_children([1] * V), V)
    nodes, codes, lengths = paths
    pad = ((0, 0), (0, depth - nodes.shape[1]))
    return np.pad(nodes, pad), np.pad(codes, pad), lengths


def check_buffers(arrays, vocab_size, source):
    """The paths must describe one binary tree with the V words as its leaves: integer arrays,
    codes 0 or 1, lengths 1 … D, node ids in [0, V − 2] (0 past a path's end), every path
    starting at the root 0, each (node, branch) leading to one child and each node but the root
    reached from one (node, branch): then every word's path is its leaf's path and the
    probabilities sum to one."""
    nodes, codes, lengths = (arrays[k] for k in BUFFERS)
    where = f"{source}: arrays '{NODES}', '{CODES}', '{LENGTHS}'"
    if not all(np.issubdtype(a.dtype, np.integer) for a in (nodes, codes, lengths)):
        raise UserError(f"{where} must hold integers")
    V, D = nodes.shape
    if V == 1:
        if lengths[0] != 0:
            raise UserError(f"{where}: a one-word vocabulary has an empty path")
        return
    if lengths.min() < 1 or lengths.max() > D:
        raise UserError(f"{where}: path lengths must be between 1 and {D}")
    on_path = np.arange(D) < lengths[:, None]
    if np.any((codes != 0) & (codes != 1)) or np.any(codes[~on_path] != 0) or np.any(nodes[~on_path] != 0):
        raise UserError(f"{where}: codes must be 0 or 1, and nodes and codes 0 past a path's end")
    if np.any(nodes < 0) or np.any(nodes > V - 2) or np.any(nodes[:, 0] != 0):
        raise UserError(f"{where}: node ids must be in [0, {V - 2}] and every path must start at the root 0")
    if not _is_one_tree(nodes, codes, lengths, on_path):
        raise UserError(f"{where}: the paths do not form one binary tree over the {V} words")


def _is_one_tree(nodes, codes, lengths, on_path):
    """Each of the 2(V − 1) (node, branch) pairs has exactly one child, and every node but the
    root (V − 2 inner nodes, V leaves) exactly one parent."""
    V, D = nodes.shape
    w, d = np.nonzero(on_path)
    source = nodes[w, d] * 2 + codes[w, d]
    last = d == lengths[w] - 1
    child = np.where(last, V - 1 + w, nodes[w, np.minimum(d + 1, D - 1)])  # leaves are V − 1 + w
    edges = np.unique(source * (2 * V) + child)
    sources, children = edges // (2 * V), edges % (2 * V)
    return (len(edges) == 2 * (V - 1) and len(np.unique(sources)) == len(edges)
            and len(np.unique(children)) == len(edges) and children.min() > 0)


# --------------------------------------------------------------------------------------------
# Forward and backward over a window


def window_paths(nodes, codes, lengths, targets):
    """The targets' paths, padded to the window's longest -> path, code (M, D_w) and the mask
    (M, D_w) of the entries on a path."""
    L = lengths[targets]
    depth = int(L.max()) if L.size else 0
    return nodes[targets, :depth], codes[targets, :depth], np.arange(depth) < L[:, None]


def pair_logits(h, vectors, bias, path, gathered=None):
    """z_{t,d} = h_t · v_{n_{t,d}} + b_{n_{t,d}} for every (position, depth) -> (z (M, D_w),
    the gathered node vectors (M, D_w, H), into `gathered` if given); rows split over the cores."""
    M, depth = path.shape
    if gathered is None:
        gathered = np.empty((M, depth, h.shape[1]), vectors.dtype)
    z = np.empty((M, depth), np.result_type(h, vectors))

    def rows(a, b):
        np.take(vectors, path[a:b], axis=0, out=gathered[a:b], mode="clip")  # ids checked on load
        np.matmul(gathered[a:b], h[a:b, :, None], out=z[a:b, :, None])
    parallel.map_rows(rows, M, depth * h.shape[1], LIGHT_BLOCK)
    z += bias[path]
    return z, gathered


def pair_log_probs(z, code, mask):
    """log σ(s z) of every pair in float64, 0 off the paths: the log-probability of each branch."""
    z = z.astype(np.float64)
    return np.where(mask, -np.logaddexp(0.0, np.where(code == 0, -z, z)), 0.0)


def hsm_forward(h, vectors, bias, nodes, codes, lengths, targets, scale=1.0, need_grad=True, workspace=None):
    """h: (M, H), vectors: (V − 1, H), bias: (V − 1,), nodes/codes: (V, D), lengths: (V,),
    targets: (M,) -> (Σ_t −log P(target_t | h_t), cache for hsm_backward or None)."""
    path, code, mask = window_paths(nodes, codes, lengths, targets)
    gathered = layers.buffer(workspace, "hsm_vectors", (*path.shape, h.shape[1]), vectors.dtype)
    z, gathered = pair_logits(h, vectors, bias, path, gathered)
    loss = -float(pair_log_probs(z, code, mask).sum())  # Σ_t Σ_d softplus(−s_d z_d)
    if not need_grad:
        return loss, None
    z64 = z.astype(np.float64)
    dz = ((0.5 + 0.5 * np.tanh(0.5 * z64) - (1 - code)) * (mask * scale)).astype(z.dtype)  # σ(z) − (1 − c), eq. H1
    return loss, (h, gathered, path, mask, dz, vectors.shape)


def hsm_backward(cache, workspace=None):
    """-> dh (M, H), d_vectors and d_bias as layers.SparseRows of the nodes the window touched
    (the TOP_NODES first always included)."""
    h, gathered, path, mask, dz, (n_nodes, H) = cache
    M = h.shape[0]
    dh = layers.buffer(workspace, "dtop", (M, H), h.dtype)

    def rows(a, b):
        np.matmul(dz[a:b, None, :], gathered[a:b], out=dh[a:b, None, :])  # δh_t = Σ_d dz_{t,d} v_{n_{t,d}}, eq. H2
    parallel.map_rows(rows, M, dz.shape[1] * H, LIGHT_BLOCK)
    K = min(TOP_NODES, n_nodes // 2)  # at most half: a small model exercises both ways
    dz_top = np.zeros((M, K), dz.dtype)
    t, d = np.nonzero(mask & (path < K))
    dz_top[t, path[t, d]] = dz[t, d]  # a path passes a node at most once
    dv_top = parallel.matmul(dz_top.T, h)  # ∇v_n = Σ_t dz_{t,n} h_t for the top nodes, eq. H3
    t, d = np.nonzero(mask & (path >= K))
    ids, dv_deep, db_deep = _sum_by_node(path[t, d], dz[t, d], h, t)
    ids = np.concatenate((np.arange(K), ids))
    return (dh, layers.SparseRows(ids, np.concatenate((dv_top, dv_deep)), (n_nodes, H)),
            layers.SparseRows(ids, np.concatenate((dz_top.sum(axis=0), db_deep)), (n_nodes,)))


def _sum_by_node(node, g, h, t):
    """For pairs (node, g, position t) -> (distinct nodes ascending, Σ g·h_t per node (eq. H3),
    Σ g per node). The pairs sorted by node; each node's rows added one round per multiplicity
    (deep nodes are on few positions' paths, so the rounds are few and every one is vectorized)."""
    order = np.argsort(node, kind="stable")
    node, g, t = node[order], g[order], t[order]
    starts = np.flatnonzero(np.concatenate(([True], node[1:] != node[:-1]))) if node.size else node
    counts = np.diff(np.append(starts, node.size))
    rows = h[t] * g[:, None]
    sums = rows[starts]
    k, live = 1, np.flatnonzero(counts > 1)
    while live.size:
        sums[live] += rows[starts[live] + k]
        k += 1
        live = live[counts[live] > k]
    return node[starts], sums, (np.add.reduceat(g, starts) if node.size else g)


# --------------------------------------------------------------------------------------------
# The output-layer interface (see output/__init__.py)


def loss_forward(params, model_cfg, h, targets, scale, need_grad=True, workspace=None, row_loss=None):
    """h: (M, H), targets: (M,) -> (Σ_t −log P(target_t | h_t), cache or None). `row_loss` (M,)
    receives each target's −log P (from target_log_probs)."""
    if row_loss is not None:
        row_loss[...] = target_log_probs(params, h, targets, workspace)
        np.negative(row_loss, out=row_loss)
        if not need_grad:  # scoring: the per-target figures are all that is asked for
            return float(row_loss.sum()), None
    return hsm_forward(h, params[VECTORS], params[BIAS], params[NODES], params[CODES], params[LENGTHS], targets,
                       scale, need_grad, workspace)


def loss_backward(cache, workspace=None):
    """-> dh (M, H), {output.node_vectors, output.node_b: SparseRows of the touched nodes}."""
    dh, d_vectors, d_bias = hsm_backward(cache, workspace)
    return dh, {VECTORS: d_vectors, BIAS: d_bias}


def touched(params, targets):
    """targets: (M,) -> {output.node_vectors, output.node_b: the nodes on the targets' paths},
    the rows their loss reads, ascending."""
    path, _, mask = window_paths(params[NODES], params[CODES], params[LENGTHS], targets)
    nodes = np.unique(path[mask])
    return {VECTORS: nodes, BIAS: nodes}


def target_log_probs(params, h, targets, workspace=None):
    """h: (M, H), targets: (M,) -> log P(target_t | h_t) = Σ_d log σ(s_d z_d), (M,) float64."""
    path, code, mask = window_paths(params[NODES], params[CODES], params[LENGTHS], targets)
    z, _ = pair_logits(h, params[VECTORS], params[BIAS], path)
    return pair_log_probs(z, code, mask).sum(axis=1)


def log_probs(params, h):
    """h: (M, H) -> log P(w | h) of every word, (M, V) float64: every node's z at once, then
    each word's path summed, one depth at a time."""
    z = (h @ params[VECTORS].T + params[BIAS]).astype(np.float64)  # (M, V − 1)
    branch = (-np.logaddexp(0.0, -z), -np.logaddexp(0.0, z))  # log σ(z), log σ(−z)
    nodes, codes, lengths = params[NODES], params[CODES], params[LENGTHS]
    out = np.zeros((h.shape[0], len(lengths)))
    for d in range(int(lengths.max())):
        on = lengths > d
        n, c = nodes[on, d], codes[on, d]
        out[:, on] += np.where(c == 0, branch[0][:, n], branch[1][:, n])
    return out
