/* One GPT-2 decoding step at batch 1 on the CPU, fused: the embeddings, every block and the
 * output head for one token in one call, with no per-operation dispatch in between.
 *
 * Built on first use by gpt2port/engine/compiled_step.py with the machine's C compiler and loaded
 * through ctypes; the struct layouts below match the ctypes ones there. Weights are read where
 * the model holds them (fp32, fp16 or bf16), activations are fp32, and the keys and values go
 * to the decoder's own fp32 cache. Products stream each weight once on every OpenMP thread of
 * the calling thread; the small operations between them run on one.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif

enum { F32 = 0, F16 = 1, BF16 = 2 };

typedef struct {
    const void *weight;  /* (rows, cols) row-major, or (cols, rows) row-major when transposed */
    const float *bias;   /* (rows,) or NULL */
    int64_t rows, cols, transposed;
    int64_t stride;      /* elements from one stored row to the next */
} Product;

typedef struct {
    const float *scale, *shift; /* shift may be NULL */
} Norm;

typedef struct {
    Norm attention_norm, feed_forward_norm;
    Product query, key, value, output, expansion, contraction; /* query may be all three
                                                                   (3 x width rows; then key and value have none) */
} Block;

typedef struct {
    int64_t width, heads, layers, capacity, kind, exact_gelu;
    double epsilon;
    const void *token_table, *position_table; /* rows of `width` in `kind` */
    const Block *blocks;
    Norm final_norm;
    Product head;
    float *keys, *values; /* (layers, heads, capacity, width / heads) */
    float *scratch;       /* x, normed, q, k, v, context, hidden, scores (see offsets below) */
    float *logits;        /* (head.rows,) */
    float *partials;      /* (threads, partial_size): each thread's sums of transposed products */
    int64_t threads, partial_size;
    int64_t token_rows, position_rows; /* rows of the tables: a step reads none past them */
} Model;

enum { STEP_DONE = 0, TOKEN_OUTSIDE = 1, POSITION_OUTSIDE = 2 };

/* The sizes of the structs as this compiler lays them out, for the caller to hold against its
 * own (a field added on one side only is refused before any step). */
void gpt2port_struct_sizes(int64_t sizes[4]) {
    sizes[0] = (int64_t)sizeof(Product);
    sizes[1] = (int64_t)sizeof(Norm);
    sizes[2] = (int64_t)sizeof(Block);
    sizes[3] = (int64_t)sizeof(Model);
}

static inline float to_float(const void *data, int64_t index, int64_t kind) {
    if (kind == F32) return ((const float *)data)[index];
    uint32_t bits = ((const uint16_t *)data)[index];
    if (kind == BF16) {
        bits <<= 16;
    } else { /* IEEE half -> single */
        uint32_t sign = (bits & 0x8000u) << 16, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
        if (exponent == 0x1f) {
            bits = sign | 0x7f800000u | (mantissa << 13);
        } else if (exponent == 0) {
            float value = ldexpf((float)mantissa, -24);
            return sign ? -value : value;
        } else {
            bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
        }
    }
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static int64_t element_size(int64_t kind) { return kind == F32 ? 4 : 2; }

/* The share [begin, end) of `count` items, in multiples of `grain`, of this thread. */
static void share(int64_t count, int64_t grain, int64_t *begin, int64_t *end) {
    int64_t thread = 0, threads = 1;
#ifdef _OPENMP
    thread = omp_get_thread_num();
    threads = omp_get_num_threads();
#endif
    int64_t each = ((count + threads - 1) / threads + grain - 1) / grain * grain;
    *begin = thread * each < count ? thread * each : count;
    *end = *begin + each < count ? *begin + each : count;
}

#ifdef HAVE_AVX2
static inline __m256 load8(const char *p, int64_t kind) {
    if (kind == F32) return _mm256_loadu_ps((const float *)p);
    if (kind == F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float sum8(__m256 v) {
    __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    low = _mm_hadd_ps(low, low);
    return _mm_cvtss_f32(_mm_hadd_ps(low, low));
}
#endif

/* y[r] = W[r, :] . x for rows [begin, end) of a row-major W. */
static void dot_rows(const Product *p, int64_t kind, const float *x, float *y, int64_t begin,
                     int64_t end) {
    const char *weight = (const char *)p->weight;
    int64_t cols = p->cols, size = element_size(kind), step = p->stride * size, row = begin;
#ifdef HAVE_AVX2
    if (cols % 8 == 0) {
        for (; row + 4 <= end; row += 4) {
            const char *w0 = weight + row * step, *w1 = w0 + step, *w2 = w1 + step,
                       *w3 = w2 + step;
            /* half-precision rows are short streams: fetch the next rows' line meanwhile
             * (measured: fp16 23 -> 30 GB/s; fp32 streams faster without it) */
            const char *ahead = w0 + 4 * step;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = 0; k < cols; k += 8) {
                if (kind != F32) _mm_prefetch(ahead + k * 8, _MM_HINT_T0);
                __m256 xs = _mm256_loadu_ps(x + k);
                a0 = _mm256_fmadd_ps(load8(w0 + k * size, kind), xs, a0);
                a1 = _mm256_fmadd_ps(load8(w1 + k * size, kind), xs, a1);
                a2 = _mm256_fmadd_ps(load8(w2 + k * size, kind), xs, a2);
                a3 = _mm256_fmadd_ps(load8(w3 + k * size, kind), xs, a3);
            }
            y[row] = sum8(a0);
            y[row + 1] = sum8(a1);
            y[row + 2] = sum8(a2);
            y[row + 3] = sum8(a3);
        }
    }
#endif
    for (; row < end; row++) {
        const void *w = weight + row * step;
        float total = 0.0f;
        for (int64_t k = 0; k < cols; k++) total += to_float(w, k, kind) * x[k];
        y[row] = total;
    }
}

/* This thread's part of y = W^T x for a row-major (cols, rows) W: its share of W's stored rows,
 * read as one contiguous stream, summed into its own `partial` (rows,). */
static void accumulate_rows(const Product *p, int64_t kind, const float *x, float *partial) {
    const char *weight = (const char *)p->weight;
    int64_t size = element_size(kind), begin, end;
    share(p->cols, 1, &begin, &end);
    for (int64_t c = 0; c < p->rows; c++) partial[c] = 0.0f;
    int64_t i = begin, stride = p->stride * size;
#ifdef HAVE_AVX2
    for (; i + 4 <= end && p->rows % 8 == 0; i += 4) { /* four rows per pass over `partial` */
        const char *w0 = weight + i * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                   *w3 = w2 + stride;
        __m256 x0 = _mm256_set1_ps(x[i]), x1 = _mm256_set1_ps(x[i + 1]),
               x2 = _mm256_set1_ps(x[i + 2]), x3 = _mm256_set1_ps(x[i + 3]);
        for (int64_t c = 0; c < p->rows; c += 8) {
            __m256 sum = _mm256_fmadd_ps(load8(w0 + c * size, kind), x0, _mm256_loadu_ps(partial + c));
            sum = _mm256_fmadd_ps(load8(w1 + c * size, kind), x1, sum);
            sum = _mm256_fmadd_ps(load8(w2 + c * size, kind), x2, sum);
            _mm256_storeu_ps(partial + c, _mm256_fmadd_ps(load8(w3 + c * size, kind), x3, sum));
        }
    }
#endif
    for (; i < end; i++) {
        const char *w = weight + i * stride;
        float xi = x[i];
        int64_t c = 0;
#ifdef HAVE_AVX2
        __m256 xs = _mm256_set1_ps(xi);
        for (; c + 8 <= p->rows; c += 8)
            _mm256_storeu_ps(partial + c, _mm256_fmadd_ps(load8(w + c * size, kind), xs,
                                                          _mm256_loadu_ps(partial + c)));
#endif
        for (; c < p->rows; c++) partial[c] += to_float(w, c, kind) * xi;
    }
}

static int64_t thread_number(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int64_t team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The calling thread's OpenMP thread count (1 without OpenMP): a step's team, at most. */
int64_t gpt2port_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* y = W x + b, on every thread of the team; `gelu` applies the activation to this thread's
 * share. Ends with a barrier. */
static void product(const Model *m, const Product *p, const float *x, float *y, int gelu) {
    int64_t begin, end, team = team_size();
    if (p->rows == 0) return; /* key and value when query holds all three */
    if (p->transposed) {
        accumulate_rows(p, m->kind, x, m->partials + thread_number() * m->partial_size);
#pragma omp barrier
    }
    share(p->rows, 8, &begin, &end);
    if (p->transposed) {
        for (int64_t r = begin; r < end; r++) {
            float total = 0.0f;
            for (int64_t t = 0; t < team; t++) total += m->partials[t * m->partial_size + r];
            y[r] = total;
        }
    } else {
        dot_rows(p, m->kind, x, y, begin, end);
    }
    for (int64_t r = begin; r < end; r++) {
        float value = y[r] + (p->bias ? p->bias[r] : 0.0f);
        if (gelu == 1) /* GPT-2's tanh approximation */
            value = 0.5f * value * (1.0f + tanhf(0.7978845608f * (value + 0.044715f * value * value * value)));
        else if (gelu == 2)
            value = 0.5f * value * (1.0f + erff(value * 0.70710678f));
        y[r] = value;
    }
#pragma omp barrier
}

static void layer_norm(const Norm *norm, const float *x, float *y, int64_t width, double epsilon) {
    double mean = 0.0, variance = 0.0;
    for (int64_t i = 0; i < width; i++) mean += x[i];
    mean /= width;
    for (int64_t i = 0; i < width; i++) variance += (x[i] - mean) * (x[i] - mean);
    float inverse = (float)(1.0 / sqrt(variance / width + epsilon));
    for (int64_t i = 0; i < width; i++)
        y[i] = (float)(x[i] - mean) * inverse * norm->scale[i] + (norm->shift ? norm->shift[i] : 0.0f);
}

/* The attention of one block for the token at `position`: its key and value cached, the
 * context of every head from the keys at 0..position. */
static void attend(const Model *m, int64_t layer, int64_t position, const float *q,
                   const float *k, const float *v, float *context, float *scores) {
    int64_t heads = m->heads, size = m->width / heads, capacity = m->capacity;
    float scale = 1.0f / sqrtf((float)size);
    int64_t begin, end;
    share(heads, 1, &begin, &end);
    for (int64_t h = begin; h < end; h++) {
        float *keys = m->keys + ((layer * heads + h) * capacity) * size;
        float *values = m->values + ((layer * heads + h) * capacity) * size;
        memcpy(keys + position * size, k + h * size, size * sizeof(float));
        memcpy(values + position * size, v + h * size, size * sizeof(float));
        float *score = scores + h * capacity, best = -INFINITY, total = 0.0f;
        for (int64_t s = 0; s <= position; s++) {
            float dot = 0.0f;
            for (int64_t d = 0; d < size; d++) dot += q[h * size + d] * keys[s * size + d];
            score[s] = dot * scale;
            best = score[s] > best ? score[s] : best;
        }
        for (int64_t s = 0; s <= position; s++) total += score[s] = expf(score[s] - best);
        float *out = context + h * size;
        for (int64_t d = 0; d < size; d++) out[d] = 0.0f;
        for (int64_t s = 0; s <= position; s++) {
            float weight = score[s] / total;
            for (int64_t d = 0; d < size; d++) out[d] += weight * values[s * size + d];
        }
    }
#pragma omp barrier
}

/* The logits (head.rows,) after `token` at `position`, its keys and values cached; STEP_DONE,
 * or why nothing was read or written (a token outside the table, a position outside the table
 * or the cache). */
int64_t gpt2port_step(const Model *m, int64_t token, int64_t position) {
    if (token < 0 || token >= m->token_rows) return TOKEN_OUTSIDE;
    if (position < 0 || position >= m->position_rows || position >= m->capacity)
        return POSITION_OUTSIDE;
    int64_t width = m->width, hidden_width = m->blocks[0].expansion.rows;
    float *x = m->scratch, *normed = x + width, *q = normed + width, *k = q + width,  /* q|k|v */
          *v = k + width, *context = v + width, *hidden = context + width,
          *scores = hidden + hidden_width;
    for (int64_t i = 0; i < width; i++)
        x[i] = to_float(m->token_table, token * width + i, m->kind)
               + to_float(m->position_table, position * width + i, m->kind);
    int gelu = m->exact_gelu ? 2 : 1;
    int64_t team = gpt2port_max_threads(); /* the calling thread's own setting, */
    team = team < m->threads ? team : m->threads; /* up to what `partials` holds */
#pragma omp parallel num_threads(team)
    {
        for (int64_t layer = 0; layer < m->layers; layer++) {
            const Block *b = &m->blocks[layer];
#pragma omp single
            layer_norm(&b->attention_norm, x, normed, width, m->epsilon);
            product(m, &b->query, normed, q, 0);
            product(m, &b->key, normed, k, 0);
            product(m, &b->value, normed, v, 0);
            attend(m, layer, position, q, k, v, context, scores);
            product(m, &b->output, context, normed, 0);
#pragma omp single
            {
                for (int64_t i = 0; i < width; i++) x[i] += normed[i];
                layer_norm(&b->feed_forward_norm, x, normed, width, m->epsilon);
            }
            product(m, &b->expansion, normed, hidden, gelu);
            product(m, &b->contraction, hidden, normed, 0);
#pragma omp single
            for (int64_t i = 0; i < width; i++) x[i] += normed[i];
        }
#pragma omp single
        layer_norm(&m->final_norm, x, normed, width, m->epsilon);
        product(m, &m->head, normed, m->logits, 0);
    }
    return STEP_DONE;
}
