/* GPT-2 decoding steps on the CPU, fused: the embeddings, every block and the output head for
 * a set of rows in one call, with no per-operation dispatch in between. A row is one token of
 * one sequence at one cache slot: a step of a batch is a row per sequence; a short prompt is a
 * row per token (its keys written before any row attends).
 *
 * Built on first use by gpt2port/engine/compiled_step.py with the machine's C compiler and loaded
 * through ctypes; the struct layouts below match the ctypes ones there. Weights are read where
 * the model holds them (fp32, fp16 or bf16), activations are fp32, and the keys and values go
 * to the decoder's own fp32 cache. Products stream each weight once for the whole batch, on
 * the OpenMP threads of the calling thread; the small operations between them share the rows.
 * Steps running at once on other threads of the process share the cores: each takes its part
 * of them (see `team_for_this_step`), so that threads never outnumber cores.
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
    float *keys, *values; /* (layers, sequences, heads, capacity, width / heads) */
    float *scratch;       /* per row x, normed, qkv, context, hidden; scores (gpt2port_step) */
    float *logits;        /* (most_rows, head.rows) */
    float *partials;      /* (threads, most_rows, partial_size): each thread's sums of
                             transposed products, a row's every `rows + PARTIAL_GAP` floats */
    int64_t threads, partial_size;
    int64_t token_rows, position_rows; /* rows of the tables: a step reads none past them */
    int64_t sequences, most_rows;      /* the cache's sequences; the rows a step may have */
} Model;

/* The rows of one step: each row's token, position, sequence and cache slot; which slots of
 * each sequence hold real tokens; and whose logits to compute, in order. */
typedef struct {
    const int64_t *tokens, *positions, *sequences, *slots; /* (count,) */
    int64_t count;
    const int64_t *padding;        /* (sequences, padding_stride): 1 a token, 0 padding; NULL:
                                      every slot holds a token */
    int64_t padding_stride;
    const int64_t *logit_rows;     /* (logit_count,), ascending */
    int64_t logit_count;
} Rows;

enum { STEP_DONE = 0, TOKEN_OUTSIDE = 1, POSITION_OUTSIDE = 2 };

/* Floats between one row's partial sums and the next's: rows 12 KB apart (3072 outputs) share
 * their addresses' low 12 bits, and the CPU then stalls loads behind stores to the other row (4K
 * aliasing: a batch of 16 ran at half the speed of 8 on the Conv1D layout without the gap).
 * partial_size counts it. */
enum { PARTIAL_GAP = 16 };

/* The sizes of the structs as this compiler lays them out, for the caller to hold against its
 * own (a field added on one side only is refused before any step). */
void gpt2port_struct_sizes(int64_t sizes[5]) {
    sizes[0] = (int64_t)sizeof(Product);
    sizes[1] = (int64_t)sizeof(Norm);
    sizes[2] = (int64_t)sizeof(Block);
    sizes[3] = (int64_t)sizeof(Model);
    sizes[4] = (int64_t)sizeof(Rows);
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

/* A batch of vectors: row b of `count` starts at data + b * stride. */
typedef struct {
    float *data;
    int64_t stride, count;
} Vectors;

static inline float *row_of(Vectors v, int64_t b) { return v.data + b * v.stride; }

#ifdef HAVE_AVX2
/* y0[0..3] = W[r..r+3, :] . x0, and y1 likewise for x1 unless it is NULL: the four weight rows
 * (from w0, `step` bytes apart) are read from memory once per batch, then from the cache. */
static inline void four_rows(const char *w0, int64_t step, int64_t cols, int64_t size,
                             int64_t kind, const float *x0, const float *x1, float *y0,
                             float *y1) {
    const char *w1 = w0 + step, *w2 = w1 + step, *w3 = w2 + step;
    /* half-precision rows are short streams: fetch the next rows' line meanwhile
     * (measured: fp16 23 -> 30 GB/s; fp32 streams faster without it) */
    const char *ahead = w0 + 4 * step;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (x1 == NULL) {
        for (int64_t k = 0; k < cols; k += 8) {
            if (kind != F32) _mm_prefetch(ahead + k * 8, _MM_HINT_T0);
            __m256 xs = _mm256_loadu_ps(x0 + k);
            a0 = _mm256_fmadd_ps(load8(w0 + k * size, kind), xs, a0);
            a1 = _mm256_fmadd_ps(load8(w1 + k * size, kind), xs, a1);
            a2 = _mm256_fmadd_ps(load8(w2 + k * size, kind), xs, a2);
            a3 = _mm256_fmadd_ps(load8(w3 + k * size, kind), xs, a3);
        }
    } else {
        __m256 c0 = a0, c1 = a0, c2 = a0, c3 = a0;
        for (int64_t k = 0; k < cols; k += 8) {
            if (kind != F32) _mm_prefetch(ahead + k * 8, _MM_HINT_T0);
            __m256 xs = _mm256_loadu_ps(x0 + k), xt = _mm256_loadu_ps(x1 + k);
            __m256 v0 = load8(w0 + k * size, kind), v1 = load8(w1 + k * size, kind),
                   v2 = load8(w2 + k * size, kind), v3 = load8(w3 + k * size, kind);
            a0 = _mm256_fmadd_ps(v0, xs, a0);
            a1 = _mm256_fmadd_ps(v1, xs, a1);
            a2 = _mm256_fmadd_ps(v2, xs, a2);
            a3 = _mm256_fmadd_ps(v3, xs, a3);
            c0 = _mm256_fmadd_ps(v0, xt, c0);
            c1 = _mm256_fmadd_ps(v1, xt, c1);
            c2 = _mm256_fmadd_ps(v2, xt, c2);
            c3 = _mm256_fmadd_ps(v3, xt, c3);
        }
        y1[0] = sum8(c0);
        y1[1] = sum8(c1);
        y1[2] = sum8(c2);
        y1[3] = sum8(c3);
    }
    y0[0] = sum8(a0);
    y0[1] = sum8(a1);
    y0[2] = sum8(a2);
    y0[3] = sum8(a3);
}
#endif

/* y[b, r] = W[r, :] . x[b] for rows [begin, end) of a row-major W, every b. */
static void dot_rows(const Product *p, int64_t kind, Vectors x, Vectors y, int64_t begin,
                     int64_t end) {
    const char *weight = (const char *)p->weight;
    int64_t cols = p->cols, size = element_size(kind), step = p->stride * size, row = begin;
#ifdef HAVE_AVX2
    if (cols % 8 == 0) {
        for (; row + 4 <= end; row += 4) {
            for (int64_t b = 0; b < x.count; b += 2) {
                int pair = b + 1 < x.count;
                four_rows(weight + row * step, step, cols, size, kind, row_of(x, b),
                          pair ? row_of(x, b + 1) : NULL, row_of(y, b) + row,
                          pair ? row_of(y, b + 1) + row : NULL);
            }
        }
    }
#endif
    for (; row < end; row++) {
        const void *w = weight + row * step;
        for (int64_t b = 0; b < x.count; b++) {
            const float *xb = row_of(x, b);
            float total = 0.0f;
            for (int64_t k = 0; k < cols; k++) total += to_float(w, k, kind) * xb[k];
            row_of(y, b)[row] = total;
        }
    }
}

/* This thread's part of y[b] = W^T x[b] for a row-major (cols, rows) W: its share of W's stored
 * rows, each read once as one contiguous stream, summed into its own `partial` (batch, rows).
 * (Keeping blocks of `partial` in the cache made no difference at 1 to 16 rows.) */
static void accumulate_rows(const Product *p, int64_t kind, Vectors x, float *partial) {
    const char *weight = (const char *)p->weight;
    int64_t size = element_size(kind), begin, end, rows = p->rows, batch = x.count;
    int64_t apart = rows + PARTIAL_GAP; /* from one row's sums to the next's */
    share(p->cols, 1, &begin, &end);
    for (int64_t c = 0; c < apart * batch; c++) partial[c] = 0.0f;
    int64_t i = begin, stride = p->stride * size;
#ifdef HAVE_AVX2
    for (; i + 4 <= end && rows % 8 == 0; i += 4) { /* four rows per pass over `partial` */
        const char *w0 = weight + i * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                   *w3 = w2 + stride;
        for (int64_t c = 0; c < rows; c += 8) {
            __m256 v0 = load8(w0 + c * size, kind), v1 = load8(w1 + c * size, kind),
                   v2 = load8(w2 + c * size, kind), v3 = load8(w3 + c * size, kind);
            for (int64_t b = 0; b < batch; b++) {
                const float *xb = row_of(x, b) + i;
                float *out = partial + b * apart + c;
                __m256 sum = _mm256_fmadd_ps(v0, _mm256_broadcast_ss(xb), _mm256_loadu_ps(out));
                sum = _mm256_fmadd_ps(v1, _mm256_broadcast_ss(xb + 1), sum);
                sum = _mm256_fmadd_ps(v2, _mm256_broadcast_ss(xb + 2), sum);
                _mm256_storeu_ps(out, _mm256_fmadd_ps(v3, _mm256_broadcast_ss(xb + 3), sum));
            }
        }
    }
#endif
    for (; i < end; i++) {
        const char *w = weight + i * stride;
        for (int64_t b = 0; b < batch; b++) {
            float xi = row_of(x, b)[i], *out = partial + b * apart;
            for (int64_t c = 0; c < rows; c++) out[c] += to_float(w, c, kind) * xi;
        }
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

static int64_t steps_running = 0; /* steps inside gpt2port_step now, on any thread */

/* The threads of a step that starts while `others` steps run: the calling thread's OpenMP
 * setting, up to what `partials` holds, and no more than this step's part of the cores. Teams
 * that together outnumber the cores stall at every barrier, waiting for a thread the system
 * has put aside (4 threads generating at once gave 0.26x the tokens of one). */
static int64_t team_for_this_step(const Model *m, int64_t others) {
    int64_t team = gpt2port_max_threads(), cores = 1;
#ifdef _OPENMP
    cores = omp_get_num_procs();
#endif
    team = team < m->threads ? team : m->threads;
    int64_t part = cores / (others + 1);
    team = team < part ? team : part;
    return team > 1 ? team : 1;
}

/* y[b] = W x[b] + bias, on every thread of the team; `gelu` applies the activation to this
 * thread's share. Ends with a barrier. */
static void product(const Model *m, const Product *p, Vectors x, Vectors y, int gelu) {
    int64_t begin, end, team = team_size(), batch = x.count;
    if (p->rows == 0) return; /* key and value when query holds all three */
    int64_t each = batch * m->partial_size; /* one thread's partial sums */
    if (p->transposed) {
        accumulate_rows(p, m->kind, x, m->partials + thread_number() * each);
#pragma omp barrier
    }
    share(p->rows, 8, &begin, &end);
    for (int64_t b = 0; b < batch && p->transposed; b++) {
        float *yb = row_of(y, b);
        for (int64_t r = begin; r < end; r++) {
            float total = 0.0f;
            for (int64_t t = 0; t < team; t++) total += m->partials[t * each + b * (p->rows + PARTIAL_GAP) + r];
            yb[r] = total;
        }
    }
    if (!p->transposed) dot_rows(p, m->kind, x, y, begin, end);
    for (int64_t b = 0; b < batch; b++) {
        float *yb = row_of(y, b);
        for (int64_t r = begin; r < end; r++) {
            float value = yb[r] + (p->bias ? p->bias[r] : 0.0f);
            if (gelu == 1) /* GPT-2's tanh approximation */
                value = 0.5f * value * (1.0f + tanhf(0.7978845608f * (value + 0.044715f * value * value * value)));
            else if (gelu == 2)
                value = 0.5f * value * (1.0f + erff(value * 0.70710678f));
            yb[r] = value;
        }
    }
#pragma omp barrier
}

/* x[b] += added[b] (added: NULL for none; it may be y, read before y is written), then
 * y[b] = norm(x[b]), for this thread's share of the rows. Ends with a barrier. */
static void add_and_norm(const Model *m, const Norm *norm, Vectors x, const float *added,
                         int64_t added_stride, Vectors y) {
    int64_t width = m->width, begin, end;
    share(x.count, 1, &begin, &end);
    for (int64_t b = begin; b < end; b++) {
        float *xb = row_of(x, b), *yb = row_of(y, b);
        if (added != NULL)
            for (int64_t i = 0; i < width; i++) xb[i] += added[b * added_stride + i];
        double mean = 0.0, variance = 0.0;
        for (int64_t i = 0; i < width; i++) mean += xb[i];
        mean /= width;
        for (int64_t i = 0; i < width; i++) variance += (xb[i] - mean) * (xb[i] - mean);
        float inverse = (float)(1.0 / sqrt(variance / width + m->epsilon));
        for (int64_t i = 0; i < width; i++)
            yb[i] = (float)(xb[i] - mean) * inverse * norm->scale[i]
                    + (norm->shift ? norm->shift[i] : 0.0f);
    }
#pragma omp barrier
}

/* Whether a query that sees `real` (its sequence's padding row; NULL: it sees every key) skips
 * the key at slot s. */
static inline int skipped(const int64_t *real, int64_t s) { return real != NULL && !real[s]; }

/* The attention of one block for each row's token: every row's key and value cached at its
 * slot first, then the context of every head from the keys of its sequence at 0..slot (a real
 * token's skipping padding; padding sees every key before it, as the regular step's). Ends with
 * a barrier. */
static void attend(const Model *m, const Rows *rows, int64_t layer, Vectors qkv, Vectors context,
                   float *scores) {
    int64_t heads = m->heads, size = m->width / heads, capacity = m->capacity;
    float scale = 1.0f / sqrtf((float)size);
    int64_t begin, end;
    share(qkv.count * heads, 1, &begin, &end);
    for (int64_t pair = begin; pair < end; pair++) {
        int64_t r = pair / heads, h = pair % heads, slot = rows->slots[r];
        const float *k = row_of(qkv, r) + m->width + h * size, *v = k + m->width;
        int64_t place = ((layer * m->sequences + rows->sequences[r]) * heads + h) * capacity * size;
        memcpy(m->keys + place + slot * size, k, size * sizeof(float));
        memcpy(m->values + place + slot * size, v, size * sizeof(float));
    }
#pragma omp barrier
    for (int64_t pair = begin; pair < end; pair++) {
        int64_t r = pair / heads, h = pair % heads, slot = rows->slots[r];
        const float *q = row_of(qkv, r) + h * size;
        int64_t place = ((layer * m->sequences + rows->sequences[r]) * heads + h) * capacity * size;
        float *keys = m->keys + place, *values = m->values + place;
        const int64_t *real = rows->padding ? rows->padding
                                              + rows->sequences[r] * rows->padding_stride : NULL;
        if (real && !real[slot]) real = NULL; /* a padding query */
        float *score = scores + pair * capacity, best = -INFINITY, total = 0.0f;
        for (int64_t s = 0; s <= slot; s++) {
            if (skipped(real, s)) continue; /* padding: never attended */
            float dot = 0.0f;
            for (int64_t d = 0; d < size; d++) dot += q[d] * keys[s * size + d];
            score[s] = dot * scale;
            best = score[s] > best ? score[s] : best;
        }
        for (int64_t s = 0; s <= slot; s++)
            if (!skipped(real, s)) total += score[s] = expf(score[s] - best);
        float *out = row_of(context, r) + h * size;
        for (int64_t d = 0; d < size; d++) out[d] = 0.0f;
        for (int64_t s = 0; s <= slot; s++) {
            if (skipped(real, s)) continue;
            float weight = score[s] / total;
            for (int64_t d = 0; d < size; d++) out[d] += weight * values[s * size + d];
        }
    }
#pragma omp barrier
}

/* Whether every row of `rows` stays inside the tables, the cache and the padding mask, and its
 * logit rows are its own, ascending. */
static int64_t rows_problem(const Model *m, const Rows *rows) {
    if (rows->count < 1 || rows->count > m->most_rows) return POSITION_OUTSIDE;
    if (rows->logit_count < 0 || rows->logit_count > rows->count) return POSITION_OUTSIDE;
    for (int64_t r = 0; r < rows->count; r++) {
        if (rows->tokens[r] < 0 || rows->tokens[r] >= m->token_rows) return TOKEN_OUTSIDE;
        if (rows->positions[r] < 0 || rows->positions[r] >= m->position_rows
            || rows->slots[r] < 0 || rows->slots[r] >= m->capacity
            || rows->sequences[r] < 0 || rows->sequences[r] >= m->sequences
            || (rows->padding != NULL && rows->slots[r] >= rows->padding_stride))
            return POSITION_OUTSIDE;
    }
    for (int64_t i = 0; i < rows->logit_count; i++)
        if (rows->logit_rows[i] < i || rows->logit_rows[i] >= rows->count
            || (i > 0 && rows->logit_rows[i] <= rows->logit_rows[i - 1]))
            return POSITION_OUTSIDE;
    return STEP_DONE;
}

/* The logits (logit_count, head.rows) after the rows' tokens, their keys and values cached;
 * STEP_DONE, or why nothing was read or written (a token outside the table; a position, slot,
 * sequence or logit row outside its table, cache, mask or rows). */
int64_t gpt2port_step(const Model *m, const Rows *rows) {
    int64_t problem = rows_problem(m, rows);
    if (problem != STEP_DONE) return problem;
    int64_t count = rows->count, width = m->width, hidden_width = m->blocks[0].expansion.rows;
    /* per row: x, normed, q|k|v, context, hidden; then every row's scores */
    Vectors x = {m->scratch, width, count}, normed = {x.data + count * width, width, count},
            qkv = {normed.data + count * width, 3 * width, count},
            context = {qkv.data + count * 3 * width, width, count},
            hidden = {context.data + count * width, hidden_width, count},
            last = {normed.data, width, rows->logit_count},
            logits = {m->logits, m->head.rows, rows->logit_count};
    float *scores = hidden.data + count * hidden_width;
    for (int64_t r = 0; r < count; r++)
        for (int64_t i = 0; i < width; i++)
            row_of(x, r)[i] = to_float(m->token_table, rows->tokens[r] * width + i, m->kind)
                              + to_float(m->position_table, rows->positions[r] * width + i, m->kind);
    int gelu = m->exact_gelu ? 2 : 1;
    int64_t others = __atomic_fetch_add(&steps_running, 1, __ATOMIC_RELAXED);
#pragma omp parallel num_threads(team_for_this_step(m, others))
    {
        Vectors q = qkv, k = {qkv.data + width, qkv.stride, count},
                v = {qkv.data + 2 * width, qkv.stride, count};
        add_and_norm(m, &m->blocks[0].attention_norm, x, NULL, 0, normed);
        for (int64_t layer = 0; layer < m->layers; layer++) {
            const Block *b = &m->blocks[layer];
            product(m, &b->query, normed, q, 0);
            product(m, &b->key, normed, k, 0);
            product(m, &b->value, normed, v, 0);
            attend(m, rows, layer, qkv, context, scores);
            product(m, &b->output, context, normed, 0); /* q|k|v are read: normed is free */
            add_and_norm(m, &b->feed_forward_norm, x, normed.data, normed.stride, normed);
            product(m, &b->expansion, normed, hidden, gelu);
            product(m, &b->contraction, hidden, normed, 0);
            const Norm *next = layer + 1 < m->layers ? &m->blocks[layer + 1].attention_norm
                                                      : &m->final_norm;
            add_and_norm(m, next, x, normed.data, normed.stride, normed);
        }
#pragma omp single
        for (int64_t i = 0; i < rows->logit_count; i++) /* ascending: never over a later one */
            if (rows->logit_rows[i] != i)
                memcpy(row_of(normed, i), row_of(normed, rows->logit_rows[i]), width * sizeof(float));
        if (rows->logit_count > 0) product(m, &m->head, last, logits, 0);
    }
    __atomic_fetch_sub(&steps_running, 1, __ATOMIC_RELAXED);
    return STEP_DONE;
}
