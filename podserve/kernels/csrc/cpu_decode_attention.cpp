// Decode attention on the CPU over a paged (or one-block-per-sequence) KV cache, AVX-512.
//
// One query token per sequence. For each sequence, one pass over its cached K rows computes
// the scores of every query head (all KV heads at once: a cached row is read whole and in
// order, which keeps the DRAM stream fed; the rows of the next block are prefetched while a
// block is read, since blocks can sit anywhere in the pool), then an exact softmax per head,
// then one pass over its V rows accumulates the output. float32 math throughout; bf16 K/V
// rows are widened on load. Specialised per (GQA group, head_dim) so that the query and
// accumulator tiles stay in registers or L1.
//
// Built at first use by podserve/kernels/cpu_decode.py (-O3 -march=native); the Python
// wrapper, the torch reference and the limits are there. Without AVX-512 it does not build
// and the engine keeps its torch path.
#ifndef __AVX512F__
#error "cpu_decode_attention needs AVX-512F (the engine falls back to torch attention)"
#endif
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

template <typename T> static inline __m512 load16(const T *p);
template <> inline __m512 load16<float>(const float *p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<uint16_t>(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 exp512(__m512 x) {  // exp(x) for x <= 0 (scores minus their max), relative error ~1e-6
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, log2e);
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);  // in [-0.5, 0.5]
    // 2^f by a degree-6 polynomial
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

template <typename T, int G, int D>
static void decode_one(const float *qs, float *os, const T *k, const T *v, const int32_t *table, int len,
                       int block_size, int H, float *scratch, float *accbuf) {
    // One sequence, every KV head in one pass over its rows: each cached row (all heads) is
    // read once and contiguously, which is what keeps a DRAM stream fed.
    constexpr int V = D / 16;
    const int64_t row_stride = (int64_t)H * D;
    const int HG = H * G;
    float mx[8 * 32];
    for (int i = 0; i < HG; i++) mx[i] = -INFINITY;
    int t = 0;
    const int nblocks = (len + block_size - 1) / block_size;
    for (int b = 0; b < nblocks; b++) {
        const T *kb = k + (int64_t)table[b] * block_size * row_stride;
        const char *next = b + 1 < nblocks ? (const char *)(k + (int64_t)table[b + 1] * block_size * row_stride) : nullptr;
        const int rows = len - t < block_size ? len - t : block_size;
        const int64_t row_bytes = row_stride * (int64_t)sizeof(T);
        for (int r = 0; r < rows; r++, t++) {
            const T *row = kb + r * row_stride;
            if (next)
                for (int64_t off = r * row_bytes; off < (r + 1) * row_bytes; off += 64)
                    _mm_prefetch(next + off, _MM_HINT_T0);
            for (int h = 0; h < H; h++) {
                __m512 kr[V];
                for (int i = 0; i < V; i++) kr[i] = load16<T>(row + h * D + i * 16);
                const float *qh = qs + h * G * D;
                for (int g = 0; g < G; g++) {
                    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh + g * D), kr[0]);
                    for (int i = 1; i < V; i++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + g * D + i * 16), kr[i], a);
                    const float s = _mm512_reduce_add_ps(a);
                    const int hg = h * G + g;
                    scratch[(int64_t)hg * len + t] = s;
                    mx[hg] = s > mx[hg] ? s : mx[hg];
                }
            }
        }
    }
    float inv[8 * 32];
    for (int hg = 0; hg < HG; hg++) {
        float *sg = scratch + (int64_t)hg * len;
        __m512 m = _mm512_set1_ps(mx[hg]), tot = _mm512_setzero_ps();
        int i = 0;
        for (; i + 16 <= len; i += 16) {
            __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sg + i), m));
            _mm512_storeu_ps(sg + i, e);
            tot = _mm512_add_ps(tot, e);
        }
        if (i < len) {
            __mmask16 mask = (__mmask16)((1u << (len - i)) - 1);
            __m512 e = _mm512_maskz_mov_ps(mask, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, sg + i), m)));
            _mm512_mask_storeu_ps(sg + i, mask, e);
            tot = _mm512_add_ps(tot, e);
        }
        inv[hg] = 1.0f / _mm512_reduce_add_ps(tot);
    }
    for (int i = 0; i < HG * D; i += 16) _mm512_storeu_ps(accbuf + i, _mm512_setzero_ps());
    t = 0;
    for (int b = 0; b < nblocks; b++) {
        const T *vb = v + (int64_t)table[b] * block_size * row_stride;
        const char *next = b + 1 < nblocks ? (const char *)(v + (int64_t)table[b + 1] * block_size * row_stride) : nullptr;
        const int rows = len - t < block_size ? len - t : block_size;
        const int64_t row_bytes = row_stride * (int64_t)sizeof(T);
        for (int r = 0; r < rows; r++, t++) {
            const T *row = vb + r * row_stride;
            if (next)
                for (int64_t off = r * row_bytes; off < (r + 1) * row_bytes; off += 64)
                    _mm_prefetch(next + off, _MM_HINT_T0);
            for (int h = 0; h < H; h++) {
                __m512 vr[V];
                for (int i = 0; i < V; i++) vr[i] = load16<T>(row + h * D + i * 16);
                for (int g = 0; g < G; g++) {
                    const int hg = h * G + g;
                    const __m512 p = _mm512_set1_ps(scratch[(int64_t)hg * len + t]);
                    float *a = accbuf + hg * D;
                    for (int i = 0; i < V; i++)
                        _mm512_storeu_ps(a + i * 16, _mm512_fmadd_ps(p, vr[i], _mm512_loadu_ps(a + i * 16)));
                }
            }
        }
    }
    for (int hg = 0; hg < HG; hg++) {
        const __m512 s = _mm512_set1_ps(inv[hg]);
        for (int i = 0; i < V; i++)
            _mm512_storeu_ps(os + hg * D + i * 16, _mm512_mul_ps(_mm512_loadu_ps(accbuf + hg * D + i * 16), s));
    }
}

template <typename T>
static int decode(const float *q, float *out, const T *k, const T *v, const int32_t *block_tables,
                  int64_t table_stride, const int32_t *seq_lens, int num_seqs, int num_heads, int num_kv_heads,
                  int head_dim, int block_size, float *scratch) {
    const int group = num_heads / num_kv_heads;
    const int64_t row_stride = (int64_t)num_kv_heads * head_dim;
    typedef void (*Fn)(const float *, float *, const T *, const T *, const int32_t *, int, int, int, float *, float *);
    Fn fn = nullptr;
#define CASE(G, D) if (group == G && head_dim == D) fn = decode_one<T, G, D>;
    CASE(1, 64) CASE(2, 64) CASE(3, 64) CASE(4, 64) CASE(5, 64) CASE(6, 64) CASE(7, 64) CASE(8, 64)
    CASE(1, 128) CASE(2, 128) CASE(3, 128) CASE(4, 128) CASE(5, 128) CASE(6, 128) CASE(7, 128) CASE(8, 128)
#undef CASE
    if (!fn || num_heads > 256) return -1;
    float accbuf[256 * 128] __attribute__((aligned(64)));
    for (int s = 0; s < num_seqs; s++)
        if (seq_lens[s] < 1) return -2;
    for (int s = 0; s < num_seqs; s++)
        fn(q + (int64_t)s * num_heads * head_dim, out + (int64_t)s * num_heads * head_dim, k, v,
           block_tables + s * table_stride, seq_lens[s], block_size, num_kv_heads, scratch, accbuf);
    return 0;
}

extern "C" {
int decode_attention_f32(const float *q, float *out, const float *k, const float *v, const int32_t *bt, int64_t ts,
                         const int32_t *sl, int n, int nh, int nkv, int hd, int bs, float *scratch) {
    return decode<float>(q, out, k, v, bt, ts, sl, n, nh, nkv, hd, bs, scratch);
}
int decode_attention_bf16(const float *q, float *out, const uint16_t *k, const uint16_t *v, const int32_t *bt,
                          int64_t ts, const int32_t *sl, int n, int nh, int nkv, int hd, int bs, float *scratch) {
    return decode<uint16_t>(q, out, k, v, bt, ts, sl, n, nh, nkv, hd, bs, scratch);
}
}
