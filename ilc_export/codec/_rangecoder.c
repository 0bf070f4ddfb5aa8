/*
 * ilc_export.codec._rangecoder: a second implementation of the entropy coder the ILC
 * bitstream uses (docs/bitstream.md section 3), byte-exact with constriction 0.4/0.5's
 * queue coder:
 *
 *   - constriction.stream.queue.RangeEncoder / RangeDecoder (DefaultRangeEncoder:
 *     32-bit words, 64-bit state, carry handling by "inverted" word runs, the same seal),
 *   - constriction.stream.model.Categorical(pmf, perfect=False) (leaky "fast"
 *     quantisation of a float pmf to a 24-bit fixed-point CDF),
 *   - constriction.stream.model.Uniform(n) (24-bit).
 *
 * Written from the algorithm's description (constriction's Rust source was read for the
 * arithmetic only; no code is copied). Why hand-rolled: constriction publishes no Linux
 * aarch64 wheel and no sdist, and no maintained coder with this exact state machine ships
 * for Jetson. See docs/deploy-jetson.md.
 *
 * Whole streams per call, no per-symbol Python, the GIL released while coding. Plain C99
 * + the CPython C API (buffer protocol; no numpy headers), so it builds on any platform
 * with a C compiler. Bad input never crashes or hangs: every loop is bounded by the
 * caller's symbol count and every table index is checked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PREC 24
#define ONE ((uint32_t)1 << PREC)
#define LUT_SHIFT 12 /* decoder lookup: quantile >> 12 -> first candidate symbol (4096 entries) */
#define LUT_SIZE (1u << (PREC - LUT_SHIFT))
#define MAX_ABS_SYMBOL ((int64_t)1 << 30)
#define END_MARKER 0xC0DEu
#define NB_ALPHABET 32

/* ------------------------------------------------------------------------------------ */
/* leaky quantisation: constriction's from_floating_point_probabilities_fast             */

/* Rust's `f64 as u32`: saturating, NaN -> 0. */
static uint32_t f64_to_u32_sat(double x) {
    if (!(x > 0.0)) return 0; /* NaN, negatives, zero */
    if (x >= 4294967296.0) return UINT32_MAX;
    return (uint32_t)x;
}

/* cdf[0..n] from pmf[0..n-1]; 0 on success, -1 if constriction would refuse the pmf,
 * -2 if the result is not a strictly increasing CDF (cannot happen for pmf >= 0). */
static int quantize_pmf(const double *pmf, Py_ssize_t n, uint32_t *cdf) {
    if (n < 2 || (uint64_t)n >= (uint64_t)ONE - 1) return -1;
    uint32_t free_weight = ONE - (uint32_t)n;
    double norm = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) norm += pmf[i]; /* sequential, as Iterator::sum */
    if (!isnormal(norm) || norm < 0.0) return -1;
    double scale = (double)free_weight / norm;
    double cum = 0.0;
    uint32_t slack = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        cdf[i] = f64_to_u32_sat(cum * scale) + slack; /* wrapping add, as in release Rust */
        cum = cum + pmf[i];
        slack += 1;
    }
    cdf[n] = ONE;
    if (cdf[0] != 0) return -2;
    for (Py_ssize_t i = 0; i < n; i++)
        if (cdf[i + 1] <= cdf[i]) return -2;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* encoder                                                                               */

typedef struct {
    uint64_t lower, range;
    int inverted;
    uint64_t num_inverted;
    uint32_t first_inverted;
    uint32_t *words;
    size_t len, cap;
    int oom;
} Enc;

static void enc_init(Enc *e, size_t cap_hint) {
    e->lower = 0;
    e->range = UINT64_MAX;
    e->inverted = 0;
    e->num_inverted = 0;
    e->first_inverted = 0;
    e->len = 0;
    e->cap = cap_hint < 16 ? 16 : cap_hint;
    e->words = (uint32_t *)malloc(e->cap * sizeof(uint32_t));
    e->oom = e->words == NULL;
}

static void enc_grow(Enc *e) {
    size_t cap = e->cap * 2;
    uint32_t *w = (uint32_t *)realloc(e->words, cap * sizeof(uint32_t));
    if (!w) {
        e->oom = 1;
        return;
    }
    e->words = w;
    e->cap = cap;
}

static inline void enc_push(Enc *e, uint32_t w) {
    if (e->len == e->cap) {
        enc_grow(e);
        if (e->oom) return;
    }
    e->words[e->len++] = w;
}

/* encode one symbol with left cumulative `left` and probability `prob` (both of 2^24) */
static inline void enc_put(Enc *e, uint32_t left, uint32_t prob) {
    uint64_t scale = e->range >> PREC;
    uint64_t range = scale * (uint64_t)prob;
    uint64_t new_lower = e->lower + scale * (uint64_t)left;
    if (e->inverted && new_lower + range > new_lower) {
        /* the carry is resolved: emit the pending run */
        uint32_t first, rest;
        if (new_lower < e->lower) {
            first = e->first_inverted + 1;
            rest = 0;
        } else {
            first = e->first_inverted;
            rest = UINT32_MAX;
        }
        enc_push(e, first);
        for (uint64_t i = 1; i < e->num_inverted; i++) enc_push(e, rest);
        e->inverted = 0;
    }
    e->lower = new_lower;
    e->range = range;
    if (range < ((uint64_t)1 << 32)) {
        uint32_t lower_word = (uint32_t)(e->lower >> 32);
        e->range = range << 32;
        e->lower <<= 32;
        if (e->inverted) {
            e->num_inverted++;
        } else if (e->lower + e->range > e->lower) {
            enc_push(e, lower_word);
        } else {
            e->inverted = 1;
            e->num_inverted = 1;
            e->first_inverted = lower_word;
        }
    }
}

static void enc_seal(Enc *e) {
    if (e->range == UINT64_MAX) return;
    uint64_t point = e->lower + (((uint64_t)1 << 32) - 1);
    if (e->inverted) {
        uint32_t first, rest;
        if (point >= e->lower) {
            first = e->first_inverted;
            rest = UINT32_MAX;
        } else {
            first = e->first_inverted + 1;
            rest = 0;
        }
        enc_push(e, first);
        for (uint64_t i = 1; i < e->num_inverted; i++) enc_push(e, rest);
    }
    uint32_t point_word = (uint32_t)(point >> 32);
    enc_push(e, point_word);
    uint32_t upper_word = (uint32_t)((e->lower + e->range) >> 32);
    if (upper_word == point_word) enc_push(e, 0);
}

/* Uniform(n), n >= 2 */
static inline int enc_uniform(Enc *e, uint32_t n, uint32_t s) {
    uint32_t ppb = ONE / n, last = n - 1;
    if (s > last) return -1;
    uint32_t left = s * ppb;
    enc_put(e, left, s < last ? ppb : ONE - left);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* decoder                                                                               */

typedef struct {
    const unsigned char *data;
    size_t nwords, pos;
    uint64_t lower, range, point;
} Dec;

static inline uint32_t read_word(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void dec_init(Dec *d, const unsigned char *data, size_t nbytes) {
    d->data = data;
    d->nwords = nbytes / 4;
    d->pos = 0;
    d->lower = 0;
    d->range = UINT64_MAX;
    uint64_t point = 0;
    int n = 0;
    while (n < 2 && d->pos < d->nwords) {
        point = (point << 32) | read_word(data + 4 * d->pos++);
        n++;
    }
    if (n == 1) point <<= 32;
    d->point = point;
}

/* quantile of the next symbol, or -1 (constriction's InvalidData) */
static inline int64_t dec_quantile(Dec *d, uint64_t *scale_out) {
    uint64_t scale = d->range >> PREC; /* in [2^8, 2^40) */
    uint64_t diff = d->point - d->lower;
    *scale_out = scale;
    if (diff >= scale << PREC) return -1; /* quantile >= 2^24: constriction's InvalidData */
    return (int64_t)(diff / scale);
}

static inline void dec_advance(Dec *d, uint64_t scale, uint32_t left, uint32_t prob) {
    d->lower += scale * (uint64_t)left;
    d->range = scale * (uint64_t)prob;
    if (d->range < ((uint64_t)1 << 32)) {
        d->lower <<= 32;
        d->range <<= 32;
        d->point <<= 32;
        if (d->pos < d->nwords) d->point |= read_word(d->data + 4 * d->pos++);
    }
}

/* symbol of a categorical model (cdf of `size`+1 entries, lut of LUT_SIZE), -1 on bad data */
static inline int64_t dec_categorical(Dec *d, const uint32_t *cdf, const uint16_t *lut) {
    uint64_t scale;
    int64_t q = dec_quantile(d, &scale);
    if (q < 0) return -1;
    uint32_t s = lut[(uint32_t)q >> LUT_SHIFT]; /* a lower bound of the symbol */
    s += cdf[s + 1] <= (uint32_t)q;             /* usually settles it, without a branch */
    while (cdf[s + 1] <= (uint32_t)q) s++;
    dec_advance(d, scale, cdf[s], cdf[s + 1] - cdf[s]);
    return s;
}

/* dec_categorical for a model whose symbol m (cdf[m] = cm, cdf[m + 1] = cm1) is likely:
 * that symbol is recognised with two multiplications and no division. Same result as
 * dec_categorical on every input: for integer cdf values, floor(diff / scale) lies in
 * [cm, cm1) iff cm * scale <= diff < cm1 * scale (products < 2^64: scale < 2^40,
 * cdf <= 2^24), and then diff < 2^24 * scale, so the InvalidData check passes too. */
static inline int64_t dec_categorical_mode(Dec *d, const uint32_t *cdf, const uint16_t *lut, uint32_t m, uint64_t cm,
                                           uint64_t cm1) {
    uint64_t scale = d->range >> PREC;
    uint64_t diff = d->point - d->lower;
    uint64_t lo = scale * cm, hi = scale * cm1;
    if (diff - lo < hi - lo) { /* lo <= diff < hi (unsigned wrap-around when diff < lo) */
        d->lower += lo;
        d->range = hi - lo;
        if (d->range < ((uint64_t)1 << 32)) {
            d->lower <<= 32;
            d->range <<= 32;
            d->point <<= 32;
            if (d->pos < d->nwords) d->point |= read_word(d->data + 4 * d->pos++);
        }
        return m;
    }
    return dec_categorical(d, cdf, lut);
}

/* the most probable symbol of a cdf of `size` symbols (first of equals), its probability */
static uint32_t cdf_mode(const uint32_t *cdf, int32_t size, uint32_t *prob) {
    uint32_t m = 0, pm = 0;
    for (int32_t s = 0; s < size; s++) {
        uint32_t p = cdf[s + 1] - cdf[s];
        if (p > pm) {
            pm = p;
            m = (uint32_t)s;
        }
    }
    *prob = pm;
    return m;
}

static inline int64_t dec_uniform(Dec *d, uint32_t n) {
    uint32_t ppb = ONE / n, last = n - 1;
    uint64_t scale;
    int64_t q = dec_quantile(d, &scale);
    if (q < 0) return -1;
    uint32_t g = (uint32_t)q / ppb;
    if (g < last) {
        dec_advance(d, scale, g * ppb, ppb);
        return g;
    }
    dec_advance(d, scale, last * ppb, ONE - last * ppb);
    return last;
}

/* ------------------------------------------------------------------------------------ */
/* Python helpers                                                                        */

static PyObject *BitstreamError = NULL; /* set by set_error_class; ValueError until then */

typedef struct {
    Py_buffer b;
    int held;
} Buf;

static int get_buf(PyObject *o, Buf *out, Py_ssize_t itemsize, int writable, const char *what) {
    out->held = 0;
    if (PyObject_GetBuffer(o, &out->b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    out->held = 1;
    if (out->b.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of %zd bytes, got %zd", what, itemsize, out->b.itemsize);
        return -1;
    }
    return 0;
}

static void rel(Buf *b) {
    if (b->held) PyBuffer_Release(&b->b);
    b->held = 0;
}

static int get_buf_f(PyObject *o, Buf *out, int writable, const char *what) { /* float32 or float64 */
    out->held = 0;
    if (PyObject_GetBuffer(o, &out->b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    out->held = 1;
    const char *f = out->b.format ? out->b.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (!((out->b.itemsize == 4 && f[0] == 'f' && !f[1]) || (out->b.itemsize == 8 && f[0] == 'd' && !f[1]))) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float32 or float64 buffer", what);
        return -1;
    }
    return 0;
}

/* One buffer argument of a wrapper; itemsize 0: float32 or float64 (get_buf_f). */
typedef struct {
    PyObject *o;
    Buf *b;
    Py_ssize_t itemsize;
    int writable;
    const char *what;
} BufArg;

#define NBUF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* get_buf / get_buf_f over a table, in order, stopping at the first failure (rel_bufs
 * releases what was taken) */
static int get_bufs(const BufArg *a, int n) {
    for (int i = 0; i < n; i++) a[i].b->held = 0;
    for (int i = 0; i < n; i++) {
        int r = a[i].itemsize ? get_buf(a[i].o, a[i].b, a[i].itemsize, a[i].writable, a[i].what)
                              : get_buf_f(a[i].o, a[i].b, a[i].writable, a[i].what);
        if (r < 0) return -1;
    }
    return 0;
}

/* release a table's buffers; returns ret (a wrapper's result) */
static PyObject *rel_bufs(const BufArg *a, int n, PyObject *ret) {
    for (int i = 0; i < n; i++) rel(a[i].b);
    return ret;
}

/* the arguments of im2col and wino_in: (xp float32 (cin, hp, wp), cin, hp, wp, i0 (first row
 * or tile row), cnt (rows or tile rows), out writable, items of out_itemsize (0: float32|float64)) */
typedef struct {
    Buf x, o;
    Py_ssize_t cin, hp, wp, i0, cnt;
} XpOut;

static int get_xp_out(PyObject *args, XpOut *a, Py_ssize_t out_itemsize) {
    PyObject *xo, *oo;
    a->x.held = a->o.held = 0;
    if (!PyArg_ParseTuple(args, "OnnnnnO", &xo, &a->cin, &a->hp, &a->wp, &a->i0, &a->cnt, &oo)) return -1;
    const BufArg ba[] = {{xo, &a->x, 4, 0, "xp"}, {oo, &a->o, out_itemsize, 1, "out"}};
    return get_bufs(ba, NBUF(ba));
}

static PyObject *rel_xp_out(XpOut *a, PyObject *ret) {
    rel(&a->x);
    rel(&a->o);
    return ret;
}

static Py_ssize_t nitems(Buf *b) { return b->b.len / b->b.itemsize; }

/* A model set: nm models, cdfs (nm x stride uint32), sizes (nm int32), luts (nm x LUT_SIZE). */
typedef struct {
    const uint32_t *cdf;
    const int32_t *size;
    const uint16_t *lut;
    Py_ssize_t nm, stride;
} Models;

static int check_models(Buf *cdf, Buf *size, Buf *lut, Py_ssize_t stride, Models *m) {
    m->nm = nitems(size);
    m->stride = stride;
    if (stride < 3 || nitems(cdf) != m->nm * stride || lut->b.len != m->nm * (Py_ssize_t)LUT_SIZE * 2) {
        PyErr_SetString(PyExc_ValueError, "model tables have inconsistent sizes");
        return -1;
    }
    m->cdf = (const uint32_t *)cdf->b.buf;
    m->size = (const int32_t *)size->b.buf;
    m->lut = (const uint16_t *)lut->b.buf;
    for (Py_ssize_t k = 0; k < m->nm; k++) {
        if (m->size[k] < 2 || m->size[k] >= stride) {
            PyErr_SetString(PyExc_ValueError, "model size out of range");
            return -1;
        }
    }
    return 0;
}

static PyObject *words_to_bytes(Enc *e) {
    if (e->oom) {
        free(e->words);
        return PyErr_NoMemory();
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(e->len * 4));
    if (out) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        for (size_t i = 0; i < e->len; i++) {
            uint32_t w = e->words[i];
            p[4 * i] = (unsigned char)w;
            p[4 * i + 1] = (unsigned char)(w >> 8);
            p[4 * i + 2] = (unsigned char)(w >> 16);
            p[4 * i + 3] = (unsigned char)(w >> 24);
        }
    }
    free(e->words);
    return out;
}

static PyObject *raise_bitstream(const char *msg) {
    PyErr_SetString(BitstreamError ? BitstreamError : PyExc_ValueError, msg);
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* quantize_cdf(pmf: float64 buffer) -> bytes (uint32 CDF, len(pmf)+1 entries)             */

static PyObject *py_quantize_cdf(PyObject *self, PyObject *args) {
    PyObject *po;
    if (!PyArg_ParseTuple(args, "O", &po)) return NULL;
    Buf p;
    if (get_buf(po, &p, 8, 0, "pmf") < 0) {
        rel(&p);
        return NULL;
    }
    Py_ssize_t n = nitems(&p);
    const double *pmf = (const double *)p.b.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(pmf[i] >= 0.0) || isinf(pmf[i])) {
            rel(&p);
            PyErr_SetString(PyExc_ValueError, "probabilities must be finite and >= 0");
            return NULL;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    if (!out) {
        rel(&p);
        return NULL;
    }
    uint32_t *cdf = (uint32_t *)malloc((size_t)(n + 1) * 4);
    int rc = cdf ? quantize_pmf(pmf, n, cdf) : -3;
    rel(&p);
    if (rc < 0) {
        free(cdf);
        Py_DECREF(out);
        if (rc == -3) return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError,
                        rc == -1 ? "probability distribution not normalizable (fewer than 2 entries, too many, or sum not positive)"
                                 : "probability distribution quantizes to an invalid CDF");
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(out), cdf, (size_t)(n + 1) * 4); /* native order: read back as uint32 */
    free(cdf);
    return out;
}

/* build_lut(cdf uint32 (nm x stride), size int32 (nm), stride) -> bytes (nm x 256 uint32) */
static PyObject *py_build_lut(PyObject *self, PyObject *args) {
    PyObject *co, *so;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "OOn", &co, &so, &stride)) return NULL;
    Buf c, s;
    s.held = 0;
    if (get_buf(co, &c, 4, 0, "cdf") < 0 || get_buf(so, &s, 4, 0, "size") < 0) {
        rel(&c);
        rel(&s);
        return NULL;
    }
    Py_ssize_t nm = nitems(&s);
    if (stride < 3 || nitems(&c) != nm * stride) {
        rel(&c);
        rel(&s);
        PyErr_SetString(PyExc_ValueError, "cdf table has inconsistent size");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, nm * LUT_SIZE * 2);
    if (!out) {
        rel(&c);
        rel(&s);
        return NULL;
    }
    uint16_t *lut = (uint16_t *)PyBytes_AS_STRING(out);
    const uint32_t *cdf = (const uint32_t *)c.b.buf;
    const int32_t *size = (const int32_t *)s.b.buf;
    int bad = 0;
    for (Py_ssize_t k = 0; k < nm && !bad; k++) {
        const uint32_t *ck = cdf + k * stride;
        int32_t n = size[k];
        if (n < 2 || n >= stride || ck[0] != 0 || ck[n] != ONE) {
            bad = 1;
            break;
        }
        for (int32_t i = 0; i < n; i++)
            if (ck[i + 1] <= ck[i]) bad = 1;
        uint32_t sym = 0;
        for (uint32_t j = 0; j < LUT_SIZE; j++) {
            uint32_t q = j << LUT_SHIFT;
            while (ck[sym + 1] <= q) sym++;
            lut[k * LUT_SIZE + j] = (uint16_t)(sym < 65535 ? sym : 65535); /* a lower bound either way */
        }
    }
    rel(&c);
    rel(&s);
    if (bad) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "not a valid 24-bit CDF table");
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------------------------ */
/* encode_w's / decode_w's checks once their buffers are held: the model tables, then the
 * sizes of lo and of wb (the w or output buffer, nm x hw items; msg if they differ) */
static int check_w_args(Buf *wb, Buf *lo, Buf *c, Buf *s, Buf *l, Py_ssize_t stride, Py_ssize_t hw, const char *msg,
                        Models *m) {
    if (check_models(c, s, l, stride, m) < 0) return -1;
    if (hw < 0 || nitems(lo) != m->nm || nitems(wb) != m->nm * hw) {
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    return 0;
}

/* hyper stream: encode_w(w int32 (nh*hw), hw, lo int32 (nh), cdf, size, lut, stride)      */

static PyObject *py_encode_w(PyObject *self, PyObject *args) {
    PyObject *wo, *loo, *co, *so, *lo_;
    Py_ssize_t hw, stride;
    if (!PyArg_ParseTuple(args, "OnOOOOn", &wo, &hw, &loo, &co, &so, &lo_, &stride)) return NULL;
    Buf w, lo, c, s, l;
    const BufArg ba[] = {{wo, &w, 4, 0, "w"}, {loo, &lo, 4, 0, "lo"}, {co, &c, 4, 0, "cdf"}, {so, &s, 4, 0, "size"},
                         {lo_, &l, 1, 0, "lut"}};
    PyObject *ret = NULL;
    Models m;
    if (get_bufs(ba, NBUF(ba)) < 0 ||
        check_w_args(&w, &lo, &c, &s, &l, stride, hw, "w_hat shape does not match the prior tables", &m) < 0)
        goto done;
    {
        const int32_t *wv = (const int32_t *)w.b.buf, *lov = (const int32_t *)lo.b.buf;
        Enc e;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        enc_init(&e, (size_t)(m.nm * hw) / 4 + 16);
        for (Py_ssize_t ch = 0; ch < m.nm && !bad; ch++) {
            const uint32_t *cdf = m.cdf + ch * stride;
            int64_t n = m.size[ch];
            for (Py_ssize_t i = 0; i < hw; i++) {
                int64_t sym = (int64_t)wv[ch * hw + i] - lov[ch];
                if (sym < 0 || sym >= n) {
                    bad = 1;
                    break;
                }
                enc_put(&e, cdf[sym], cdf[sym + 1] - cdf[sym]);
            }
        }
        if (!bad) {
            enc_uniform(&e, 1u << 16, END_MARKER);
            enc_seal(&e);
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            free(e.words);
            PyErr_SetString(PyExc_ValueError, "w_hat outside the prior support; use quantize_w");
            goto done;
        }
        ret = words_to_bytes(&e);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* decode_w(data, out int32 (nh*hw) writable, hw, lo, cdf, size, lut, stride) -> None */
static PyObject *py_decode_w(PyObject *self, PyObject *args) {
    PyObject *dob, *oo, *loo, *co, *so, *lo_;
    Py_ssize_t hw, stride;
    if (!PyArg_ParseTuple(args, "OOnOOOOn", &dob, &oo, &hw, &loo, &co, &so, &lo_, &stride)) return NULL;
    Buf d, o, lo, c, s, l;
    const BufArg ba[] = {{dob, &d, 1, 0, "data"}, {oo, &o, 4, 1, "out"}, {loo, &lo, 4, 0, "lo"},
                         {co, &c, 4, 0, "cdf"},   {so, &s, 4, 0, "size"}, {lo_, &l, 1, 0, "lut"}};
    PyObject *ret = NULL;
    Models m;
    if (get_bufs(ba, NBUF(ba)) < 0 ||
        check_w_args(&o, &lo, &c, &s, &l, stride, hw, "output shape does not match the prior tables", &m) < 0)
        goto done;
    {
        int32_t *ov = (int32_t *)o.b.buf;
        const int32_t *lov = (const int32_t *)lo.b.buf;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        Dec dd;
        dec_init(&dd, (const unsigned char *)d.b.buf, (size_t)d.b.len);
        for (Py_ssize_t ch = 0; ch < m.nm && !err; ch++) {
            const uint32_t *cdf = m.cdf + ch * stride;
            const uint16_t *lut = m.lut + ch * LUT_SIZE;
            uint32_t pm, mode = cdf_mode(cdf, m.size[ch], &pm);
            const int use_mode = pm >= (ONE >> 2);
            const uint64_t cm = cdf[mode], cm1 = cdf[mode + 1];
            for (Py_ssize_t i = 0; i < hw; i++) {
                int64_t sym = use_mode ? dec_categorical_mode(&dd, cdf, lut, mode, cm, cm1) : dec_categorical(&dd, cdf, lut);
                if (sym < 0 || sym >= m.size[ch]) {
                    err = 1;
                    break;
                }
                ov[ch * hw + i] = (int32_t)(sym + lov[ch]);
            }
        }
        if (!err) {
            int64_t mk = dec_uniform(&dd, 1u << 16);
            if (mk < 0) err = 1;
            else if (mk != END_MARKER) err = 2;
        }
        Py_END_ALLOW_THREADS
        if (err == 1) {
            raise_bitstream("hyper stream is corrupted (invalid data)");
            goto done;
        }
        if (err == 2) {
            raise_bitstream("hyper stream is corrupted (end marker mismatch)");
            goto done;
        }
        ret = Py_NewRef(Py_None);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* ------------------------------------------------------------------------------------ */
/* latent stream                                                                         */

/* Stable grouping by scale index. The raster order is cut into GB blocks that are counted
 * and scattered in one interleaved loop (GB independent dependency chains instead of one
 * chain through the counter of a repeated index). start[k] = #{i : idx[i] < k};
 * fill[b * 256 + k] = where block b's first element with index k goes. -1 if an index >= nm. */
#define GB 8
typedef struct {
    Py_ssize_t q, len[GB];
    Py_ssize_t start[257];
    uint32_t fill[GB * 256]; /* positions: n < 2^32 (checked) */
} Groups;

static int group_blocks(const uint8_t *idx, Py_ssize_t n, Py_ssize_t nm, Groups *g) {
    uint32_t counts[GB][256];
    if ((uint64_t)n > (uint64_t)UINT32_MAX) return -2;
    memset(counts, 0, sizeof(counts));
    g->q = (n + GB - 1) / GB;
    Py_ssize_t common = g->q;
    for (int b = 0; b < GB; b++) {
        Py_ssize_t l = n - b * g->q;
        g->len[b] = l < 0 ? 0 : (l > g->q ? g->q : l);
        if (g->len[b] < common) common = g->len[b];
    }
    /* when common > 0 every block is non-empty: b * q + i stays inside idx */
    for (Py_ssize_t i = 0; i < common; i++)
        for (int b = 0; b < GB; b++) counts[b][idx[b * g->q + i]]++;
    for (int b = 0; b < GB; b++)
        for (Py_ssize_t i = common; i < g->len[b]; i++) counts[b][idx[b * g->q + i]]++;
    for (Py_ssize_t k = nm; k < 256; k++)
        for (int b = 0; b < GB; b++)
            if (counts[b][k]) return -1;
    g->start[0] = 0;
    for (Py_ssize_t k = 0; k < nm; k++) {
        Py_ssize_t at = g->start[k];
        for (int b = 0; b < GB; b++) {
            g->fill[b * 256 + k] = (uint32_t)at;
            at += counts[b][k];
        }
        g->start[k + 1] = at;
    }
    return 0;
}

/* dst[grouped position of i] = src[i] (to_groups) or dst[i] = src[grouped position of i] */
static void group_move(const Groups *g0, const uint8_t *idx, const int32_t *src, int32_t *dst, int to_groups) {
    uint32_t fill[GB * 256];
    memcpy(fill, g0->fill, sizeof(fill));
    const Py_ssize_t q = g0->q;
    Py_ssize_t common = q;
    for (int b = 0; b < GB; b++)
        if (g0->len[b] < common) common = g0->len[b];
    if (to_groups) {
        for (Py_ssize_t i = 0; i < common; i++)
            for (int b = 0; b < GB; b++) dst[fill[b * 256 + idx[b * q + i]]++] = src[b * q + i];
    } else {
        for (Py_ssize_t i = 0; i < common; i++)
            for (int b = 0; b < GB; b++) dst[b * q + i] = src[fill[b * 256 + idx[b * q + i]]++];
    }
    for (int b = 0; b < GB; b++)
        for (Py_ssize_t i = common; i < g0->len[b]; i++) {
            if (to_groups) dst[fill[b * 256 + idx[b * q + i]]++] = src[b * q + i];
            else dst[b * q + i] = src[fill[b * 256 + idx[b * q + i]]++];
        }
}

static inline uint32_t floor_log2(uint32_t u) { /* u >= 1 */
    uint32_t b = 0;
    while (u >> (b + 1)) b++;
    return b;
}

static int check_y_tables(Models *m, const int32_t *rad) {
    if (m->nm > 256) {
        PyErr_SetString(PyExc_ValueError, "more than 256 scales");
        return -1;
    }
    for (Py_ssize_t k = 0; k < m->nm; k++) {
        if (rad[k] < 0 || 2 * (int64_t)rad[k] + 3 != m->size[k]) {
            PyErr_SetString(PyExc_ValueError, "radius does not match the Gaussian table size");
            return -1;
        }
    }
    return 0;
}

/* a y stream's grouping by scale index (no Python calls: runs without the GIL); on failure
 * *err = e_range (an index >= nm) or e_mem (out of memory, or more than 2^32 symbols) */
static Groups *group_y(const uint8_t *iv, Py_ssize_t n, Py_ssize_t nm, int *err, int e_range, int e_mem) {
    Groups *gr = (Groups *)malloc(sizeof(Groups));
    if (!gr) *err = e_mem;
    else {
        int gb = group_blocks(iv, n, nm, gr);
        if (gb == -1) *err = e_range;
        else if (gb < 0) *err = e_mem; /* more than 2^32 symbols in one stream */
    }
    return gr;
}

/* encode_y's / decode_y's checks once their buffers are held: the model tables, the sizes
 * (n = items of yo, the y or output buffer; msg if they differ) and the Gaussian tables */
static int check_y_args(Buf *yo, Buf *ix, Buf *r, Buf *c, Buf *s, Buf *l, Buf *wk, Py_ssize_t stride, const char *msg,
                        Models *m, Py_ssize_t *n) {
    if (check_models(c, s, l, stride, m) < 0) return -1;
    *n = nitems(yo);
    if (nitems(ix) != *n || nitems(r) != m->nm || nitems(wk) < *n) {
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    return check_y_tables(m, (const int32_t *)r->b.buf);
}

/* encode_y(y int32 (n), idx uint8 (n), radius int32 (nm), cdf, size, lut, stride,
 *          work int32 (n) writable scratch) -> bytes */
static PyObject *py_encode_y(PyObject *self, PyObject *args) {
    PyObject *yo, *io, *ro, *co, *so, *lo_, *wo;
    Py_ssize_t stride, n;
    Models m;
    if (!PyArg_ParseTuple(args, "OOOOOOnO", &yo, &io, &ro, &co, &so, &lo_, &stride, &wo)) return NULL;
    Buf y, ix, r, c, s, l, wk;
    const BufArg ba[] = {{yo, &y, 4, 0, "y"}, {io, &ix, 1, 0, "indices"}, {ro, &r, 4, 0, "radius"}, {co, &c, 4, 0, "cdf"},
                         {so, &s, 4, 0, "size"}, {lo_, &l, 1, 0, "lut"}, {wo, &wk, 4, 1, "work"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0 ||
        check_y_args(&y, &ix, &r, &c, &s, &l, &wk, stride, "y, indices, work and tables differ in size", &m, &n) < 0)
        goto done;
    const int32_t *rad = (const int32_t *)r.b.buf;
    {
        const int32_t *yv = (const int32_t *)y.b.buf;
        const uint8_t *iv = (const uint8_t *)ix.b.buf;
        int32_t *ys = (int32_t *)wk.b.buf; /* y values in coding order (grouped by index) */
        uint32_t *esc = NULL;              /* u = e + 1 of each escape, in coding order */
        Py_ssize_t nesc = 0, esc_cap = 0;
        Groups *gr = NULL;
        Py_ssize_t *start = NULL;
        int err = 0;
        Enc e;
        e.words = NULL;
        Py_BEGIN_ALLOW_THREADS
        gr = group_y(iv, n, m.nm, &err, 1, 3);
        if (!err) {
            start = gr->start;
            group_move(gr, iv, yv, ys, 1);
            enc_init(&e, (size_t)n / 8 + 16);
            for (Py_ssize_t k = 0; k < m.nm && !err; k++) {
                const uint32_t *cdf = m.cdf + k * stride;
                const int64_t rk = rad[k];
                for (Py_ssize_t j = start[k]; j < start[k + 1]; j++) {
                    int64_t v = ys[j];
                    int64_t t;
                    if (v < -rk || v > rk) {
                        if (v < -MAX_ABS_SYMBOL || v > MAX_ABS_SYMBOL) {
                            err = 2;
                            break;
                        }
                        if (nesc == esc_cap) {
                            esc_cap = esc_cap ? 2 * esc_cap : 1024;
                            uint32_t *ne = (uint32_t *)realloc(esc, (size_t)esc_cap * sizeof(uint32_t));
                            if (!ne) {
                                err = 3;
                                break;
                            }
                            esc = ne;
                        }
                        esc[nesc++] = (uint32_t)((v < 0 ? -v : v) - rk); /* u = |s| - R - 1 + 1 */
                        t = v < 0 ? 0 : 2 * rk + 2;
                    } else {
                        t = v + rk + 1;
                    }
                    enc_put(&e, cdf[t], cdf[t + 1] - cdf[t]);
                }
            }
            if (!err && nesc) {
                for (Py_ssize_t i = 0; i < nesc; i++) enc_uniform(&e, NB_ALPHABET, floor_log2(esc[i]));
                for (uint32_t b = 1; b < NB_ALPHABET; b++) {
                    if (b <= 16) {
                        for (Py_ssize_t i = 0; i < nesc; i++)
                            if (floor_log2(esc[i]) == b) enc_uniform(&e, 1u << b, esc[i] - (1u << b));
                    } else {
                        for (Py_ssize_t i = 0; i < nesc; i++)
                            if (floor_log2(esc[i]) == b) enc_uniform(&e, 1u << 16, (esc[i] - (1u << b)) & 0xFFFFu);
                        for (Py_ssize_t i = 0; i < nesc; i++)
                            if (floor_log2(esc[i]) == b) enc_uniform(&e, 1u << (b - 16), (esc[i] - (1u << b)) >> 16);
                    }
                }
            }
            if (!err) {
                enc_uniform(&e, 1u << 16, END_MARKER);
                enc_seal(&e);
            }
        }
        Py_END_ALLOW_THREADS
        free(esc);
        free(gr);
        if (err) {
            free(e.words);
            if (err == 1) PyErr_SetString(PyExc_ValueError, "scale index out of range");
            else if (err == 2) PyErr_SetString(PyExc_ValueError, "|y symbol| above 2**30 cannot be coded");
            else PyErr_NoMemory();
            goto done;
        }
        ret = words_to_bytes(&e);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* decode_y(data, out int32 (n) writable, idx uint8 (n), radius, cdf, size, lut, stride,
 *          work int32 (n) writable scratch) -> None */
static PyObject *py_decode_y(PyObject *self, PyObject *args) {
    PyObject *dob, *oo, *io, *ro, *co, *so, *lo_, *wo;
    Py_ssize_t stride, n;
    Models m;
    if (!PyArg_ParseTuple(args, "OOOOOOOnO", &dob, &oo, &io, &ro, &co, &so, &lo_, &stride, &wo)) return NULL;
    Buf d, o, ix, r, c, s, l, wk;
    const BufArg ba[] = {{dob, &d, 1, 0, "data"},  {oo, &o, 4, 1, "out"}, {io, &ix, 1, 0, "indices"},
                         {ro, &r, 4, 0, "radius"}, {co, &c, 4, 0, "cdf"}, {so, &s, 4, 0, "size"},
                         {lo_, &l, 1, 0, "lut"},   {wo, &wk, 4, 1, "work"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0 ||
        check_y_args(&o, &ix, &r, &c, &s, &l, &wk, stride, "output, indices, work and tables differ in size", &m, &n) < 0)
        goto done;
    const int32_t *rad = (const int32_t *)r.b.buf;
    {
        int32_t *ov = (int32_t *)o.b.buf;
        const uint8_t *iv = (const uint8_t *)ix.b.buf;
        int32_t *ys = (int32_t *)wk.b.buf; /* decoded values in coding order */
        int32_t *escj = NULL;              /* coding-order positions of escapes */
        uint8_t *escnb = NULL, *esck = NULL;
        uint64_t *escu = NULL;
        Py_ssize_t nesc = 0, esc_cap = 0;
        Groups *gr = NULL;
        Py_ssize_t *start = NULL;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        gr = group_y(iv, n, m.nm, &err, 8, 9);
        if (!err) start = gr->start;
        Dec dd;
        dec_init(&dd, (const unsigned char *)d.b.buf, (size_t)d.b.len);
        for (Py_ssize_t k = 0; k < m.nm && !err; k++) {
            const uint32_t *cdf = m.cdf + k * stride;
            const uint16_t *lut = m.lut + k * LUT_SIZE;
            const int64_t rk = rad[k], top = 2 * rk + 2;
            uint32_t pm, mode = cdf_mode(cdf, m.size[k], &pm);
            /* mode-first where it pays (a miss costs a mispredicted branch) */
            const int use_mode = pm >= (ONE >> 2);
            const uint64_t cm = cdf[mode], cm1 = cdf[mode + 1];
            for (Py_ssize_t j = start[k]; j < start[k + 1]; j++) {
                int64_t t = use_mode ? dec_categorical_mode(&dd, cdf, lut, mode, cm, cm1) : dec_categorical(&dd, cdf, lut);
                if (t < 0) {
                    err = 1;
                    break;
                }
                ys[j] = (int32_t)(t - rk - 1);
                if (t == 0 || t == top) {
                    if (nesc == esc_cap) {
                        esc_cap = esc_cap ? 2 * esc_cap : 1024;
                        int32_t *nj = (int32_t *)realloc(escj, (size_t)esc_cap * sizeof(int32_t));
                        uint8_t *nk = nj ? (uint8_t *)realloc(esck, (size_t)esc_cap) : NULL;
                        if (nj) escj = nj;
                        if (nk) esck = nk;
                        if (!nj || !nk) {
                            err = 9;
                            break;
                        }
                    }
                    escj[nesc] = (int32_t)j;
                    esck[nesc++] = (uint8_t)k;
                }
            }
        }
        if (!err && nesc) {
            escnb = (uint8_t *)malloc((size_t)nesc);
            escu = (uint64_t *)malloc((size_t)nesc * sizeof(uint64_t));
            if (!escnb || !escu) err = 9;
            for (Py_ssize_t i = 0; i < nesc && !err; i++) {
                int64_t nb = dec_uniform(&dd, NB_ALPHABET);
                if (nb < 0) err = 1;
                else {
                    escnb[i] = (uint8_t)nb;
                    escu[i] = (uint64_t)1 << nb;
                }
            }
            for (uint32_t b = 1; b < NB_ALPHABET && !err; b++) {
                if (b <= 16) {
                    for (Py_ssize_t i = 0; i < nesc && !err; i++) {
                        if (escnb[i] != b) continue;
                        int64_t v = dec_uniform(&dd, 1u << b);
                        if (v < 0) err = 1;
                        else escu[i] += (uint64_t)v;
                    }
                } else {
                    for (Py_ssize_t i = 0; i < nesc && !err; i++) {
                        if (escnb[i] != b) continue;
                        int64_t v = dec_uniform(&dd, 1u << 16);
                        if (v < 0) err = 1;
                        else escu[i] += (uint64_t)v;
                    }
                    for (Py_ssize_t i = 0; i < nesc && !err; i++) {
                        if (escnb[i] != b) continue;
                        int64_t v = dec_uniform(&dd, 1u << (b - 16));
                        if (v < 0) err = 1;
                        else escu[i] += (uint64_t)v << 16;
                    }
                }
            }
            for (Py_ssize_t i = 0; i < nesc && !err; i++) {
                int32_t j = escj[i];
                uint64_t mag = escu[i] - 1 + (uint64_t)rad[esck[i]] + 1;
                if (mag > (uint64_t)MAX_ABS_SYMBOL) {
                    err = 2;
                    break;
                }
                ys[j] = ys[j] < 0 ? -(int32_t)mag : (int32_t)mag;
            }
        }
        if (!err) {
            int64_t mk = dec_uniform(&dd, 1u << 16);
            if (mk < 0) err = 1;
            else if (mk != END_MARKER) err = 3;
        }
        if (!err) { /* back to raster order */
            group_move(gr, iv, ys, ov, 0);
        }
        Py_END_ALLOW_THREADS
        free(gr);
        free(escj);
        free(esck);
        free(escnb);
        free(escu);
        switch (err) {
            case 0:
                ret = Py_NewRef(Py_None);
                break;
            case 1: raise_bitstream("latent stream is corrupted (invalid data)"); break;
            case 2: raise_bitstream("latent stream is corrupted (escaped value above 1073741824)"); break;
            case 3: raise_bitstream("latent stream is corrupted (end marker mismatch)"); break;
            case 8: PyErr_SetString(PyExc_ValueError, "scale index out of range"); break;
            default: PyErr_NoMemory();
        }
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* ------------------------------------------------------------------------------------ */
/* generic symbol-list coding (tests, conformance): a list of (model, symbols) segments.   */
/* encode_segments(segments: list[(kind, param, symbols int32 buffer)]) -> bytes            */
/*   kind 0: categorical, param = cdf buffer (uint32, size+1 entries); kind 1: Uniform(param) */

static PyObject *py_encode_segments(PyObject *self, PyObject *args) {
    PyObject *segs;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &segs)) return NULL;
    Enc e;
    enc_init(&e, 64);
    Py_ssize_t ns = PyList_GET_SIZE(segs);
    for (Py_ssize_t i = 0; i < ns; i++) {
        int kind;
        PyObject *param, *so;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(segs, i), "iOO", &kind, &param, &so)) goto fail;
        Buf sb, cb;
        cb.held = 0;
        if (get_buf(so, &sb, 4, 0, "symbols") < 0) {
            rel(&sb);
            goto fail;
        }
        const int32_t *sym = (const int32_t *)sb.b.buf;
        Py_ssize_t n = nitems(&sb);
        int bad = 0;
        if (kind == 0) {
            if (get_buf(param, &cb, 4, 0, "cdf") < 0) {
                rel(&sb);
                rel(&cb);
                goto fail;
            }
            const uint32_t *cdf = (const uint32_t *)cb.b.buf;
            int64_t size = nitems(&cb) - 1;
            for (Py_ssize_t j = 0; j < n; j++) {
                if (sym[j] < 0 || sym[j] >= size) {
                    bad = 1;
                    break;
                }
                enc_put(&e, cdf[sym[j]], cdf[sym[j] + 1] - cdf[sym[j]]);
            }
        } else {
            long u = PyLong_AsLong(param);
            if (u < 2 || u > (long)ONE) {
                rel(&sb);
                PyErr_SetString(PyExc_ValueError, "Uniform size out of range");
                goto fail;
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                if (sym[j] < 0 || enc_uniform(&e, (uint32_t)u, (uint32_t)sym[j]) < 0) {
                    bad = 1;
                    break;
                }
            }
        }
        rel(&sb);
        rel(&cb);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "symbol outside the model's support");
            goto fail;
        }
    }
    enc_seal(&e);
    return words_to_bytes(&e);
fail:
    free(e.words);
    return NULL;
}

/* decode_segments(data, segments: list[(kind, param, count)]) -> list of bytes (int32 arrays) */
static PyObject *py_decode_segments(PyObject *self, PyObject *args) {
    PyObject *dob, *segs;
    if (!PyArg_ParseTuple(args, "OO!", &dob, &PyList_Type, &segs)) return NULL;
    Buf d;
    if (get_buf(dob, &d, 1, 0, "data") < 0) {
        rel(&d);
        return NULL;
    }
    Dec dd;
    dec_init(&dd, (const unsigned char *)d.b.buf, (size_t)d.b.len);
    Py_ssize_t ns = PyList_GET_SIZE(segs);
    PyObject *out = PyList_New(ns);
    if (!out) goto fail;
    for (Py_ssize_t i = 0; i < ns; i++) {
        int kind;
        PyObject *param;
        Py_ssize_t count;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(segs, i), "iOn", &kind, &param, &count)) goto fail;
        if (count < 0) {
            PyErr_SetString(PyExc_ValueError, "negative count");
            goto fail;
        }
        PyObject *res = PyBytes_FromStringAndSize(NULL, count * 4);
        if (!res) goto fail;
        PyList_SET_ITEM(out, i, res);
        int32_t *sym = (int32_t *)PyBytes_AS_STRING(res);
        int bad = 0;
        if (kind == 0) {
            Buf cb;
            if (get_buf(param, &cb, 4, 0, "cdf") < 0) {
                rel(&cb);
                goto fail;
            }
            const uint32_t *cdf = (const uint32_t *)cb.b.buf;
            Py_ssize_t size = nitems(&cb) - 1;
            for (Py_ssize_t j = 0; j < count; j++) {
                uint64_t scale;
                int64_t q = dec_quantile(&dd, &scale);
                if (q < 0) {
                    bad = 1;
                    break;
                }
                /* binary search: the last s with cdf[s] <= q */
                Py_ssize_t lo = 0, hi = size; /* cdf[lo] <= q < cdf[hi] */
                while (hi - lo > 1) {
                    Py_ssize_t mid = (lo + hi) / 2;
                    if (cdf[mid] <= (uint32_t)q) lo = mid;
                    else hi = mid;
                }
                dec_advance(&dd, scale, cdf[lo], cdf[lo + 1] - cdf[lo]);
                sym[j] = (int32_t)lo;
            }
            rel(&cb);
        } else {
            long u = PyLong_AsLong(param);
            if (u < 2 || u > (long)ONE) {
                PyErr_SetString(PyExc_ValueError, "Uniform size out of range");
                goto fail;
            }
            for (Py_ssize_t j = 0; j < count; j++) {
                int64_t v = dec_uniform(&dd, (uint32_t)u);
                if (v < 0) {
                    bad = 1;
                    break;
                }
                sym[j] = (int32_t)v;
            }
        }
        if (bad) {
            raise_bitstream("stream is corrupted (invalid data)");
            goto fail;
        }
    }
    rel(&d);
    return out;
fail:
    rel(&d);
    Py_XDECREF(out);
    return NULL;
}

/* tp[g] <= x < tp[g + 1] <=> g = #{T <= x}: tp[0] = -inf, tp[1 .. nt] = th, tp[nt + 1] = +inf
 * (malloc'd; NULL when out of memory) */
static double *threshold_table(const double *th, Py_ssize_t nt) {
    double *tp = (double *)malloc((size_t)(nt + 2) * sizeof(double));
    if (tp) {
        tp[0] = -HUGE_VAL;
        for (Py_ssize_t j = 0; j < nt; j++) tp[j + 1] = th[j];
        tp[nt + 1] = HUGE_VAL;
    }
    return tp;
}

/* The threshold index of x = the float32 GEMM value + bo (tp[g] <= x < tp[g + 1]; tp as in
 * last_layer_post), starting from the guess g: settled by the error bound where it can be,
 * else from the exact integer 3x3 dot product of the weight row wrow (cin x 9) with xp at
 * output row r, column col (counted in *nexact). */
static uint8_t settle_exact(double xv, double bound, Py_ssize_t g, const double *tp, Py_ssize_t nt, double bo,
                            const double *wrow, const float *xpv, Py_ssize_t cin, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t r,
                            Py_ssize_t col, Py_ssize_t *nexact) {
    int exact = 0;
    for (;;) {
        while (g < nt && xv >= tp[g + 1]) g++;
        while (g > 0 && xv < tp[g]) g--;
        if (exact || ((xv - bound >= tp[g]) & (xv + bound < tp[g + 1]))) return (uint8_t)g;
        /* not settled by the bound: the exact integer dot product, in float64
           (every product and partial sum is an integer below 2**53) */
        /* three partial sums (one per kernel row): any order is exact */
        double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0;
        for (Py_ssize_t ci = 0; ci < cin; ci++) {
            const double *wc = wrow + ci * 9;
            const float *x0 = xpv + (ci * hp + r) * wp + col, *x1 = x0 + wp, *x2 = x1 + wp;
            acc0 += wc[0] * (double)x0[0] + wc[1] * (double)x0[1] + wc[2] * (double)x0[2];
            acc1 += wc[3] * (double)x1[0] + wc[4] * (double)x1[1] + wc[5] * (double)x1[2];
            acc2 += wc[6] * (double)x2[0] + wc[7] * (double)x2[1] + wc[8] * (double)x2[2];
        }
        xv = (acc0 + acc1 + acc2) + bo;
        exact = 1;
        (*nexact)++;
        if (xv != xv) return 0; /* cannot happen for finite inputs; keep the index defined */
    }
}

/* ------------------------------------------------------------------------------------ */
/* integer scale net, last layer: threshold index of a float32 GEMM result with an error  */
/* bound, exact float64 recomputation where the bound does not settle the index (see      */
/* intnet._last_layer_indices_f32 for the argument).                                       */
/* last_layer_post(v32 float32 (cout*n), bias f64 (cout), wscale f64 (cout),               */
/*     colnorm f64 (n), thresholds f64 (nt), out uint8 (cout*n) writable,                  */
/*     xp float32 (cin, hp, wp) padded input, r0 (first output row of this band),          */
/*     w64 f64 (cout, cin*9)) -> number of elements recomputed exactly                     */

static PyObject *py_last_layer_post(PyObject *self, PyObject *args) {
    PyObject *vo, *bo, *wo, *co, *to, *oo, *xo, *w6o;
    Py_ssize_t cin, hp, wp, r0;
    if (!PyArg_ParseTuple(args, "OOOOOOOnnnnO", &vo, &bo, &wo, &co, &to, &oo, &xo, &cin, &hp, &wp, &r0, &w6o)) return NULL;
    Buf v, b, w, c, t, o, x, w6;
    const BufArg ba[] = {{vo, &v, 4, 0, "v"},          {bo, &b, 8, 0, "bias"},        {wo, &w, 8, 0, "wscale"},
                         {co, &c, 8, 0, "colnorm"},    {to, &t, 8, 0, "thresholds"},  {oo, &o, 1, 1, "out"},
                         {xo, &x, 4, 0, "xp"},         {w6o, &w6, 8, 0, "w64"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0) goto done;
    Py_ssize_t cout = nitems(&b), nt = nitems(&t), n = nitems(&c), wd = wp - 2;
    if (cin < 1 || hp < 3 || wd < 1 || n % wd || r0 < 0 || r0 + n / wd > hp - 2 || nitems(&v) != cout * n ||
        nitems(&w) != cout || nitems(&o) != cout * n || nitems(&x) != cin * hp * wp || nitems(&w6) != cout * cin * 9 ||
        nt > 255) {
        PyErr_SetString(PyExc_ValueError, "last_layer_post: inconsistent sizes");
        goto done;
    }
    {
        const float *vv = (const float *)v.b.buf, *xpv = (const float *)x.b.buf;
        const double *bias = (const double *)b.b.buf, *ws = (const double *)w.b.buf, *cn = (const double *)c.b.buf;
        const double *th = (const double *)t.b.buf, *wt = (const double *)w6.b.buf;
        uint8_t *out = (uint8_t *)o.b.buf;
        Py_ssize_t nexact = 0;
        int oom = 0;
        Py_BEGIN_ALLOW_THREADS
        double *tp = threshold_table(th, nt);
        if (!tp) oom = 1;
        double t0 = nt ? th[0] : 0.0, inv = 0.0, gmax = (double)nt;
        if (nt > 1 && th[nt - 1] > th[0]) inv = (double)(nt - 1) / (th[nt - 1] - th[0]);
        for (Py_ssize_t oc = 0; oc < cout && !oom; oc++) {
            const float *restrict vrow = vv + oc * n;
            uint8_t *restrict orow = out + oc * n;
            const double bo = bias[oc], wo = ws[oc];
            const double *restrict cnv = cn;
            for (Py_ssize_t p = 0; p < n; p++) {
                double xv = (double)vrow[p] + bo;
                double bound = wo * cnv[p];
                double gg = (xv - t0) * inv + 1.0;
                gg = gg > 0.0 ? gg : 0.0; /* also maps NaN to 0 */
                gg = gg < gmax ? gg : gmax;
                Py_ssize_t g = (Py_ssize_t)gg;
                /* fast path: the guess is the index and the bound settles it */
                if ((xv - bound >= tp[g]) & (xv + bound < tp[g + 1])) {
                    orow[p] = (uint8_t)g;
                    continue;
                }
                orow[p] = settle_exact(xv, bound, g, tp, nt, bo, wt + oc * cin * 9, xpv, cin, hp, wp, r0 + p / wd, p % wd,
                                       &nexact);
            }
        }
        free(tp);
        Py_END_ALLOW_THREADS
        ret = oom ? PyErr_NoMemory() : PyLong_FromSsize_t(nexact);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* ------------------------------------------------------------------------------------ */
/* integer scale net kernels (intnet._scale_indices_c): im2col, hidden-layer post (bias,  */
/* shift, floor, clip, pixel shuffle into the next layer's zero-padded input) and the     */
/* last layer's post with its own column norms. Plain loops; every value they produce is  */
/* an exact integer (see intnet's module docstring), so order and vectorisation do not     */
/* matter.                                                                                 */

/* AVX2 clones of the plain loops below where the compiler supports function multiversioning
 * (chosen at load time; the default clone runs elsewhere). Integer-exact work and the IEEE
 * operations of the settling test give the same results in either clone (no FMA: the
 * "avx2" target does not enable it, and -ffp-contract=off). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 6
#define ILC_SIMD __attribute__((target_clones("avx2", "default")))
#else
#define ILC_SIMD
#endif
/* the Winograd transforms store to 16 planes that never overlap (plane >= the row length);
 * without this GCC gives up on the alias checks and leaves those loops scalar */
#if defined(__GNUC__) && !defined(__clang__)
#define ILC_IVDEP _Pragma("GCC ivdep")
#else
#define ILC_IVDEP
#endif

ILC_SIMD static void im2col_loop(const float *xv, Py_ssize_t cin, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t r0,
                                 Py_ssize_t n, void *ov, int f64) {
    const Py_ssize_t wd = wp - 2;
    for (Py_ssize_t c = 0; c < cin; c++)
        for (Py_ssize_t kh = 0; kh < 3; kh++)
            for (Py_ssize_t kw = 0; kw < 3; kw++) {
                Py_ssize_t row = (c * 3 + kh) * 3 + kw;
                for (Py_ssize_t i = 0; i < n; i++) {
                    const float *restrict src = xv + (c * hp + r0 + i + kh) * wp + kw;
                    if (f64) {
                        double *restrict dst = (double *)ov + (row * n + i) * wd;
                        for (Py_ssize_t j = 0; j < wd; j++) dst[j] = (double)src[j];
                    } else {
                        float *restrict dst = (float *)ov + (row * n + i) * wd;
                        for (Py_ssize_t j = 0; j < wd; j++) dst[j] = src[j];
                    }
                }
            }
}

ILC_SIMD static void hidden_post_loop(const double *av, const double *bias, Py_ssize_t cout, Py_ssize_t n, Py_ssize_t w,
                                      double inv, double top, float *dv, Py_ssize_t hp2, Py_ssize_t wp2, Py_ssize_t r0) {
    for (Py_ssize_t o = 0; o < cout; o++) {
        const Py_ssize_t c = o >> 2, dy = (o >> 1) & 1, dx = o & 1;
        const double bo = bias[o];
        for (Py_ssize_t i = 0; i < n; i++) {
            const double *restrict arow = av + (o * n + i) * w;
            float *restrict orow = dv + (c * hp2 + 1 + 2 * (r0 + i) + dy) * wp2 + 1 + dx;
            for (Py_ssize_t j = 0; j < w; j++) {
                double x = (arow[j] + bo) * inv;
                x = x > 0.0 ? x : 0.0;
                x = x < top ? x : top;
                orow[2 * j] = (float)(int32_t)x;
            }
        }
    }
}

/* the settling pass of last_post for one output channel (see there) */
ILC_SIMD static void settle_row(const float *restrict vrow, const double *restrict cnv, Py_ssize_t n, double bo, double wo,
                                double margin, double t0, double ginv, double gtop, uint8_t *restrict orow) {
    const double lim = 70368744177664.0; /* 2^46 */
    for (Py_ssize_t p = 0; p < n; p++) {
        double xv = (double)vrow[p] + bo;
        double bnd = wo * cnv[p] + margin;
        double ul = (xv - bnd - t0) * ginv, uh = (xv + bnd - t0) * ginv;
        ul = ul > -1.0 ? ul : -1.0; /* also maps NaN to -1 (then not settled: see ok) */
        ul = ul < gtop ? ul : gtop;
        uh = uh > -1.0 ? uh : -1.0;
        uh = uh < gtop ? uh : gtop;
        int fl = (int)(ul + 1.0), fh = (int)(uh + 1.0); /* floor(u) + 1: u + 1 >= 0 */
        int ok = (fl == fh) & (fabs(xv) + bnd < lim);
        orow[p] = ok ? (uint8_t)fl : (uint8_t)255;
    }
}

/* im2col(xp float32 (cin, hp, wp), cin, hp, wp, r0, n, out (cin*9, n*(wp-2)) float32|float64):
 * out[(c*3+kh)*3+kw, i*wd+j] = xp[c, r0+i+kh, j+kw] for output rows r0 .. r0+n-1. */
static PyObject *py_im2col(PyObject *self, PyObject *args) {
    XpOut a;
    if (get_xp_out(args, &a, 0) < 0) return rel_xp_out(&a, NULL);
    const Py_ssize_t cin = a.cin, hp = a.hp, wp = a.wp, r0 = a.i0, n = a.cnt, wd = wp - 2;
    if (cin < 1 || hp < 3 || wd < 1 || n < 1 || r0 < 0 || r0 + n > hp - 2 || nitems(&a.x) != cin * hp * wp ||
        nitems(&a.o) != cin * 9 * n * wd) {
        PyErr_SetString(PyExc_ValueError, "im2col: inconsistent sizes");
        return rel_xp_out(&a, NULL);
    }
    const float *xv = (const float *)a.x.b.buf;
    int f64 = a.o.b.itemsize == 8;
    void *ov = a.o.b.buf;
    Py_BEGIN_ALLOW_THREADS
    im2col_loop(xv, cin, hp, wp, r0, n, ov, f64);
    Py_END_ALLOW_THREADS
    return rel_xp_out(&a, Py_NewRef(Py_None));
}

/* hidden_post(acc float64 (cout, n*w), bias float64 (cout), shift k, act_max,
 *             dst float32 (cout/4, 2h+2, 2w+2), r0, n, w):
 * a = clip(floor((acc + b) * 2^-k), 0, act_max), pixel-shuffled (torch.nn.PixelShuffle(2):
 * channel 4c + 2dy + dx goes to channel c, position (2i+dy, 2j+dx)) into the interior of
 * the zero-padded dst (border untouched). acc + b is an exact integer (< 2^53), the scaling
 * by a power of two is exact, and for x >= 0 truncation is floor, so
 * clip(floor(x), 0, M) == trunc(min(max(x, 0), M)) for an integer M. */
static PyObject *py_hidden_post(PyObject *self, PyObject *args) {
    PyObject *ao, *bo, *dobj;
    Py_ssize_t k, amax, r0, n, w;
    if (!PyArg_ParseTuple(args, "OOnnOnnn", &ao, &bo, &k, &amax, &dobj, &r0, &n, &w)) return NULL;
    Buf a, b, d;
    const BufArg ba[] = {{ao, &a, 8, 0, "acc"}, {bo, &b, 8, 0, "bias"}, {dobj, &d, 4, 1, "dst"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0) goto done;
    {
        Py_ssize_t cout = nitems(&b), nc = cout / 4, wp2 = 2 * w + 2;
        Py_ssize_t hp2 = nc > 0 && wp2 > 0 ? nitems(&d) / (nc * wp2) : 0;
        if (cout < 4 || cout % 4 || w < 1 || n < 1 || r0 < 0 || k < 0 || k > 62 || amax < 0 || amax >= ((Py_ssize_t)1 << 31) ||
            nitems(&a) != cout * n * w || nitems(&d) != nc * hp2 * wp2 || 2 * (r0 + n) + 2 > hp2) {
            PyErr_SetString(PyExc_ValueError, "hidden_post: inconsistent sizes");
            goto done;
        }
        const double *av = (const double *)a.b.buf, *bias = (const double *)b.b.buf;
        float *dv = (float *)d.b.buf;
        const double inv = ldexp(1.0, -(int)k), top = (double)amax;
        Py_BEGIN_ALLOW_THREADS
        hidden_post_loop(av, bias, cout, n, w, inv, top, dv, hp2, wp2, r0);
        Py_END_ALLOW_THREADS
        ret = Py_NewRef(Py_None);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* last_post(v32 float32 (cout*n), bias f64 (cout), wscale f64 (cout), thresholds f64 (nt),
 *           out uint8 (cout, hp-2, wp-2) writable (rows r0 .. r0+n/wd-1 written),
 *           xp float32 (cin, hp, wp) padded input, cin, hp, wp, r0, w64 f64 (cout, cin*9))
 *   -> number of elements recomputed exactly.
 * Same as last_layer_post, with the column norms ||im2col column||_2 computed here (sums of
 * squares of integers below 2^24: relative error below K 2^-53, none while the sums stay
 * below 2^53; one correctly rounded sqrt; a relative margin of 1e-12, and wscale carries
 * 2^-20), and a table-free settling pass first (intnet's module docstring has the argument). */
static PyObject *py_last_post(PyObject *self, PyObject *args) {
    PyObject *vo, *bo, *wo, *to, *oo, *xo, *w6o, *cno = Py_None;
    Py_ssize_t cin, hp, wp, r0;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnO|O", &vo, &bo, &wo, &to, &oo, &xo, &cin, &hp, &wp, &r0, &w6o, &cno)) return NULL;
    Buf v, b, w, t, o, x, w6, cb;
    cb.held = 0;
    const BufArg ba[] = {{vo, &v, 4, 0, "v"},   {bo, &b, 8, 0, "bias"}, {wo, &w, 8, 0, "wscale"}, {to, &t, 8, 0, "thresholds"},
                         {oo, &o, 1, 1, "out"}, {xo, &x, 4, 0, "xp"},   {w6o, &w6, 8, 0, "w64"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0) goto done;
    if (cno != Py_None && get_buf(cno, &cb, 8, 0, "cn") < 0) goto done;
    Py_ssize_t cout = nitems(&b), nt = nitems(&t), wd = wp - 2, h = hp - 2;
    Py_ssize_t n = cout > 0 ? nitems(&v) / cout : 0, nr = wd > 0 ? n / wd : 0;
    if (cin < 1 || h < 1 || wd < 1 || cout < 1 || nr < 1 || nr * wd != n || nitems(&v) != cout * n || r0 < 0 ||
        r0 + nr > h || nitems(&w) != cout || nitems(&o) != cout * h * wd || nitems(&x) != cin * hp * wp ||
        nitems(&w6) != cout * cin * 9 || nt > 254 || (cb.held && nitems(&cb) != n)) { /* 255 marks unsettled elements below */
        PyErr_SetString(PyExc_ValueError, "last_post: inconsistent sizes");
        goto done;
    }
    {
        const float *vv = (const float *)v.b.buf, *xpv = (const float *)x.b.buf;
        const double *bias = (const double *)b.b.buf, *ws = (const double *)w.b.buf;
        const double *th = (const double *)t.b.buf, *wt = (const double *)w6.b.buf;
        uint8_t *out = (uint8_t *)o.b.buf;
        Py_ssize_t nexact = 0;
        int oom = 0;
        Py_BEGIN_ALLOW_THREADS
        const int own_cn = !cb.held; /* else the caller's column bounds (wino_last_out) */
        double *sq = own_cn ? (double *)calloc((size_t)(nr + 2) * (size_t)wp, sizeof(double)) : NULL;
        double *cn = own_cn ? (double *)malloc((size_t)n * sizeof(double)) : (double *)cb.b.buf;
        double *tp = threshold_table(th, nt);
        if (!tp || (own_cn && !sq) || !cn) oom = 1;
        if (!oom && own_cn) {
            /* per padded pixel: sum over channels of a^2 (rows r0 .. r0+nr+1 of xp) */
            for (Py_ssize_t c = 0; c < cin; c++) {
                const float *restrict src = xpv + (c * hp + r0) * wp;
                for (Py_ssize_t q = 0; q < (nr + 2) * wp; q++) {
                    double a = (double)src[q];
                    sq[q] += a * a;
                }
            }
            for (Py_ssize_t i = 0; i < nr; i++)
                for (Py_ssize_t j = 0; j < wd; j++) {
                    double box = 0.0;
                    for (Py_ssize_t kh = 0; kh < 3; kh++)
                        for (Py_ssize_t kw = 0; kw < 3; kw++) box += sq[(i + kh) * wp + j + kw];
                    cn[i * wd + j] = sqrt(box * (1.0 + 1e-12));
                }
        }
        const double t0 = nt ? th[0] : 0.0;
        /* Fast pass, no table lookups: thresholds are nearly evenly spaced; with the line
           L(i) = t0 + i * step and D = max_i |T_i - L(i)|, widen [x - bound, x + bound] by
           M = D + 16 + 2^-40 (|T_0| + |T_last|) (covers D and the float64 rounding of the
           lines below while |x| + bound < 2^46, a few units at most) and map both ends to
           u = (. - t0) / step. If both floor to the same f in [-1, nt - 1], then T_i <= x - bound
           for i <= f and T_i > x + bound for i > f, so the index of every value in the interval
           (the exact v among them) is f + 1. Anything else is marked 255 (an index is at
           most nt <= 254) and redone below. */
        double step = 0.0, dev = 0.0;
        if (nt > 1 && th[nt - 1] > th[0]) {
            step = (th[nt - 1] - th[0]) / (double)(nt - 1);
            for (Py_ssize_t j2 = 0; j2 < nt; j2++) {
                double d = fabs(th[j2] - (th[0] + (double)j2 * step));
                dev = d > dev ? d : dev;
            }
        }
        const double margin = dev + 16.0 + ldexp(nt ? fabs(th[0]) + fabs(th[nt - 1]) : 0.0, -40);
        const int use_grid = step > 0.0 && margin < 0.25 * step;
        const double ginv = use_grid ? 1.0 / step : 0.0, gtop = (double)nt - 0.5;
        for (Py_ssize_t oc = 0; oc < cout && !oom; oc++) {
            const float *restrict vrow = vv + oc * n;
            uint8_t *restrict orow = out + (oc * h + r0) * wd;
            const double bo = bias[oc], wo = ws[oc];
            const double *restrict cnv = cn;
            if (!use_grid) {
                memset(orow, 255, (size_t)n);
                continue;
            }
            settle_row(vrow, cnv, n, bo, wo, margin, t0, ginv, gtop, orow);
        }
        for (Py_ssize_t oc = 0; oc < cout && !oom; oc++) {
            const float *vrow = vv + oc * n;
            uint8_t *orow = out + (oc * h + r0) * wd;
            const double bo = bias[oc], wo = ws[oc];
            for (Py_ssize_t p = 0; p < n; p++) {
                const uint8_t *hit = (const uint8_t *)memchr(orow + p, 255, (size_t)(n - p));
                if (!hit) break;
                p = hit - orow;
                double xv = (double)vrow[p] + bo;
                double bound = wo * cn[p];
                Py_ssize_t g = 0;
                orow[p] = settle_exact(xv, bound, g, tp, nt, bo, wt + oc * cin * 9, xpv, cin, hp, wp, r0 + p / wd, p % wd,
                                       &nexact);
            }
        }
        free(tp);
        free(sq);
        if (own_cn) free(cn);
        Py_END_ALLOW_THREADS
        ret = oom ? PyErr_NoMemory() : PyLong_FromSsize_t(nexact);
    }
done:
    rel(&cb);
    return rel_bufs(ba, NBUF(ba), ret);
}

/* Winograd F(2x2, 3x3) for the hidden layers (intnet._hidden_c, when the tables pass the
 * magnitude check of intnet._winograd_ok). With B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],
 * [0,1,0,-1]], A^T = [[1,1,1,0],[0,1,-1,-1]] and U = (2G) g (2G)^T (integers, G the usual
 * matrix with entries 0, 1/2, 1), every 2x2 output block of conv3x3 is
 * Y = A^T [sum_c U_c (.) (B^T d_c B)] A / 4, an identity of exact integer arithmetic. The
 * inputs d are exact integers in float32, V = B^T d B is exact in float64 (|V| <= 4 in_max),
 * the GEMM over channels is exact while 4 in_max sum_c |U_ij[o, c]| < 2^53 (checked), and the
 * output transform, bias, shift and clip run in int64. */

/* wino_in(xp float32 (cin, hp, wp), cin, hp, wp, t0, nt, out float64 (16, cin, nt*tw)):
 * tw = ceil((wp-2)/2) tile columns; tile (ti, tj) covers output rows 2(t0+ti) .. +1 and
 * columns 2tj .. 2tj+1, input rows 2(t0+ti) .. +3 of xp (reads past the padded array are 0:
 * an odd output size gets one extra row / column, computed and not written back). */
/* one channel's tile row: the 4 input rows split into even and odd columns, E_a[k] = row_a[2k],
 * O_a[k] = row_a[2k+1] (k = 0 .. tw, zero past the input; buf: E_0 O_0 E_1 O_1 ..., each
 * tw + 1 doubles), so tile tj reads E_a[tj], O_a[tj], E_a[tj+1], O_a[tj+1]: unit-stride
 * loops over tj that the compiler vectorises */
#define WINO_IN_TILE(buf, ln, tj)                                                                                     \
    const double *restrict E0 = (buf), *restrict O0 = E0 + (ln), *restrict E1 = O0 + (ln), *restrict O1 = E1 + (ln), \
                           *restrict E2 = O1 + (ln), *restrict O2 = E2 + (ln), *restrict E3 = O2 + (ln),              \
                           *restrict O3 = E3 + (ln);                                                               \
    const double t00 = E0[tj] - E2[tj], t01 = O0[tj] - O2[tj], t02 = E0[tj + 1] - E2[tj + 1],                      \
                 t03 = O0[tj + 1] - O2[tj + 1];                                                                     \
    const double t10 = E1[tj] + E2[tj], t11 = O1[tj] + O2[tj], t12 = E1[tj + 1] + E2[tj + 1],                      \
                 t13 = O1[tj + 1] + O2[tj + 1];                                                                     \
    const double t20 = E2[tj] - E1[tj], t21 = O2[tj] - O1[tj], t22 = E2[tj + 1] - E1[tj + 1],                      \
                 t23 = O2[tj + 1] - O1[tj + 1];                                                                     \
    const double t30 = E1[tj] - E3[tj], t31 = O1[tj] - O3[tj], t32 = E1[tj + 1] - E3[tj + 1],                      \
                 t33 = O1[tj + 1] - O3[tj + 1];                                                                     \
    const double V0 = t00 - t02, V1 = t01 + t02, V2 = t02 - t01, V3 = t01 - t03, V4 = t10 - t12, V5 = t11 + t12,   \
                 V6 = t12 - t11, V7 = t11 - t13, V8 = t20 - t22, V9 = t21 + t22, V10 = t22 - t21, V11 = t21 - t23, \
                 V12 = t30 - t32, V13 = t31 + t32, V14 = t32 - t31, V15 = t31 - t33;

#define WINO_STORE16(o, plane, tj, CAST, OP)                                                                          \
    o[0 * (plane) + (tj)] OP CAST(V0); o[1 * (plane) + (tj)] OP CAST(V1); o[2 * (plane) + (tj)] OP CAST(V2);        \
    o[3 * (plane) + (tj)] OP CAST(V3); o[4 * (plane) + (tj)] OP CAST(V4); o[5 * (plane) + (tj)] OP CAST(V5);        \
    o[6 * (plane) + (tj)] OP CAST(V6); o[7 * (plane) + (tj)] OP CAST(V7); o[8 * (plane) + (tj)] OP CAST(V8);        \
    o[9 * (plane) + (tj)] OP CAST(V9); o[10 * (plane) + (tj)] OP CAST(V10); o[11 * (plane) + (tj)] OP CAST(V11);    \
    o[12 * (plane) + (tj)] OP CAST(V12); o[13 * (plane) + (tj)] OP CAST(V13); o[14 * (plane) + (tj)] OP CAST(V14);  \
    o[15 * (plane) + (tj)] OP CAST(V15);
#define WINO_F64(x) (x)
#define WINO_F32(x) ((float)(x))
#define WINO_SQ(x) ((x) * (x))

ILC_SIMD static void wino_in_row64(const double *restrict buf, Py_ssize_t ln, Py_ssize_t tw, double *restrict o,
                                   Py_ssize_t plane) {
    ILC_IVDEP for (Py_ssize_t tj = 0; tj < tw; tj++) {
        WINO_IN_TILE(buf, ln, tj)
        WINO_STORE16(o, plane, tj, WINO_F64, =)
    }
}

/* float32 V (exact: the caller checks |V| < 2^24) and, with nrm, the running sums of V^2
 * over channels (squares of integers below 2^24) */
ILC_SIMD static void wino_in_row32(const double *restrict buf, Py_ssize_t ln, Py_ssize_t tw, float *restrict o,
                                   Py_ssize_t plane, double *restrict nrm, Py_ssize_t nplane) {
    if (nrm)
        ILC_IVDEP for (Py_ssize_t tj = 0; tj < tw; tj++) {
            WINO_IN_TILE(buf, ln, tj)
            WINO_STORE16(o, plane, tj, WINO_F32, =)
            WINO_STORE16(nrm, nplane, tj, WINO_SQ, +=)
        }
    else
        ILC_IVDEP for (Py_ssize_t tj = 0; tj < tw; tj++) {
            WINO_IN_TILE(buf, ln, tj)
            WINO_STORE16(o, plane, tj, WINO_F32, =)
        }
}

/* row a of a tile row into buf's E_a, O_a (wino_in_row's layout) */
ILC_SIMD static void wino_split_row(const float *restrict src, Py_ssize_t wp, Py_ssize_t ln, double *restrict e,
                                    double *restrict od) {
    const Py_ssize_t pairs = wp / 2;
    for (Py_ssize_t k = 0; k < pairs; k++) {
        e[k] = src[2 * k];
        od[k] = src[2 * k + 1];
    }
    for (Py_ssize_t k = pairs; k < ln; k++) {
        e[k] = 2 * k < wp ? src[2 * k] : 0.0;
        od[k] = 0.0;
    }
}

/* -> 0, or -1 when out of memory. nrm (16, nt*tw) or NULL: ||V_ij[:, t]||_2 over the channels. */
static int wino_in_loop(const float *xv, Py_ssize_t cin, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t t0, Py_ssize_t nt,
                        Py_ssize_t tw, void *ov, int f64, double *nrm) {
    const Py_ssize_t np_ = nt * tw, plane = cin * np_, ln = tw + 1; /* 2 ln >= wp */
    double *buf = (double *)malloc((size_t)(8 * ln) * sizeof(double));
    if (!buf) return -1;
    if (nrm) memset(nrm, 0, (size_t)(16 * np_) * sizeof(double));
    for (Py_ssize_t c = 0; c < cin; c++)
        for (Py_ssize_t ti = 0; ti < nt; ti++) {
            const Py_ssize_t r = 2 * (t0 + ti);
            for (int a = 0; a < 4; a++) {
                double *e = buf + 2 * a * ln;
                if (r + a < hp) wino_split_row(xv + (c * hp + r + a) * wp, wp, ln, e, e + ln);
                else memset(e, 0, (size_t)(2 * ln) * sizeof(double));
            }
            const Py_ssize_t at = c * np_ + ti * tw;
            if (f64) wino_in_row64(buf, ln, tw, (double *)ov + at, plane);
            else wino_in_row32(buf, ln, tw, (float *)ov + at, plane, nrm ? nrm + ti * tw : NULL, np_);
        }
    if (nrm)
        for (Py_ssize_t q = 0; q < 16 * np_; q++) nrm[q] = sqrt(nrm[q]);
    free(buf);
    return 0;
}

static PyObject *py_wino_in(PyObject *self, PyObject *args) {
    PyObject *xo, *oo, *no = Py_None;
    XpOut a;
    Buf nb;
    a.x.held = a.o.held = nb.held = 0;
    if (!PyArg_ParseTuple(args, "OnnnnnO|O", &xo, &a.cin, &a.hp, &a.wp, &a.i0, &a.cnt, &oo, &no)) return NULL;
    {
        const BufArg ba[] = {{xo, &a.x, 4, 0, "xp"}, {oo, &a.o, 0, 1, "out"}};
        if (get_bufs(ba, NBUF(ba)) < 0) return rel_xp_out(&a, NULL);
    }
    if (no != Py_None && get_buf(no, &nb, 8, 1, "norms") < 0) {
        rel(&nb);
        return rel_xp_out(&a, NULL);
    }
    const Py_ssize_t cin = a.cin, hp = a.hp, wp = a.wp, t0 = a.i0, nt = a.cnt;
    const Py_ssize_t tw = (wp - 1) / 2, th = (hp - 1) / 2; /* ceil((wp - 2) / 2) */
    if (cin < 1 || hp < 3 || wp < 3 || nt < 1 || t0 < 0 || t0 + nt > th || nitems(&a.x) != cin * hp * wp ||
        nitems(&a.o) != 16 * cin * nt * tw || (nb.held && nitems(&nb) != 16 * nt * tw)) {
        PyErr_SetString(PyExc_ValueError, "wino_in: inconsistent sizes");
        rel(&nb);
        return rel_xp_out(&a, NULL);
    }
    const float *xv = (const float *)a.x.b.buf;
    void *ov = a.o.b.buf;
    double *nv = nb.held ? (double *)nb.b.buf : NULL;
    int f64 = a.o.b.itemsize == 8;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = wino_in_loop(xv, cin, hp, wp, t0, nt, tw, ov, f64, nv);
    Py_END_ALLOW_THREADS
    rel(&nb);
    return rel_xp_out(&a, rc < 0 ? PyErr_NoMemory() : Py_NewRef(Py_None));
}

#define WINO_CHUNK 64
ILC_SIMD static void wino_post_loop(const double *mv, const int64_t *bias, Py_ssize_t cout, Py_ssize_t nt, Py_ssize_t tw,
                                    int k, int64_t top, float *dv, Py_ssize_t hp2, Py_ssize_t wp2, Py_ssize_t t0,
                                    Py_ssize_t h, Py_ssize_t w) {
    const Py_ssize_t np_ = nt * tw, plane = cout * np_;
    const double inv = ldexp(1.0, -k), topd = (double)top;
    int64_t s[4][2][WINO_CHUNK];
    float row[2][2 * WINO_CHUNK];
    for (Py_ssize_t o = 0; o < cout; o++) {
        const Py_ssize_t c = o >> 2, sy = (o >> 1) & 1, sx = o & 1;
        const double bo = (double)bias[o]; /* exact: |b| < 2^53 */
        for (Py_ssize_t ti = 0; ti < nt; ti++)
            for (Py_ssize_t j0 = 0; j0 < tw; j0 += WINO_CHUNK) {
                const Py_ssize_t nj = tw - j0 < WINO_CHUNK ? tw - j0 : WINO_CHUNK;
                const double *m = mv + o * np_ + ti * tw + j0;
                for (int a = 0; a < 4; a++) {
                    const double *restrict p0 = m + (4 * a) * plane, *restrict p1 = p0 + plane, *restrict p2 = p1 + plane,
                                           *restrict p3 = p2 + plane;
                    for (Py_ssize_t j = 0; j < nj; j++) {
                        int64_t m0 = (int64_t)p0[j], m1 = (int64_t)p1[j], m2 = (int64_t)p2[j], m3 = (int64_t)p3[j];
                        s[a][0][j] = m0 + m1 + m2;
                        s[a][1][j] = m1 - m2 - m3;
                    }
                }
                for (int b = 0; b < 2; b++)
                    for (Py_ssize_t j = 0; j < nj; j++) {
                        /* y4 = 4 conv: a multiple of 4 below 2^55 in magnitude, exact in float64 */
                        int64_t y4[2] = {s[0][b][j] + s[1][b][j] + s[2][b][j], s[1][b][j] - s[2][b][j] - s[3][b][j]};
                        for (int a = 0; a < 2; a++) {
                            double x = ((double)y4[a] * 0.25 + bo) * inv; /* exact: an integer below 2^53, then 2^-k */
                            x = x > 0.0 ? x : 0.0;
                            x = x < topd ? x : topd;
                            row[a][2 * j + b] = (float)(int32_t)x;
                        }
                    }
                for (int a = 0; a < 2; a++) {
                    const Py_ssize_t y = 2 * (t0 + ti) + a, x0 = 2 * j0;
                    if (y >= h) continue;
                    const Py_ssize_t nx = w - x0 < 2 * nj ? w - x0 : 2 * nj;
                    float *restrict orow = dv + (c * hp2 + 1 + 2 * y + sy) * wp2 + 1 + 2 * x0 + sx;
                    for (Py_ssize_t x = 0; x < nx; x++) orow[2 * x] = row[a][x];
                }
            }
    }
}

/* wino_post's loop where every m is below 2^51 in magnitude (checked by the caller, fast=1):
 * m -> int64 as the bits of m + 1.5 * 2^52 (exact there, and vectorisable), then in int64
 * z = y4 + 4b = 4 (conv + b), a = min(max(z, 0) >> (k + 2), act_max) = clip(floor((conv + b)
 * 2^-k), 0, act_max) (|z| < 2^55: no overflow). */
ILC_SIMD static void wino_post_fast_loop(const double *mv, const int64_t *bias, Py_ssize_t cout, Py_ssize_t nt,
                                         Py_ssize_t tw, int k, int64_t top, float *dv, Py_ssize_t hp2, Py_ssize_t wp2,
                                         Py_ssize_t t0, Py_ssize_t h, Py_ssize_t w) {
    const Py_ssize_t np_ = nt * tw, plane = cout * np_;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    int64_t mb;
    memcpy(&mb, &magic, 8);
    int64_t s[4][2][WINO_CHUNK];
    float rv[2][2][WINO_CHUNK];
    for (Py_ssize_t o = 0; o < cout; o++) {
        const Py_ssize_t c = o >> 2, sy = (o >> 1) & 1, sx = o & 1;
        const int64_t b4 = 4 * bias[o];
        for (Py_ssize_t ti = 0; ti < nt; ti++)
            for (Py_ssize_t j0 = 0; j0 < tw; j0 += WINO_CHUNK) {
                const Py_ssize_t nj = tw - j0 < WINO_CHUNK ? tw - j0 : WINO_CHUNK;
                const double *m = mv + (o * nt + ti) * tw + j0; /* o * np_ + ti * tw + j0 */
                for (int a = 0; a < 4; a++) {
                    const double *restrict p0 = m + (4 * a) * plane, *restrict p1 = p0 + plane, *restrict p2 = p1 + plane,
                                           *restrict p3 = p2 + plane;
                    int64_t *restrict s0 = s[a][0], *restrict s1 = s[a][1];
                    for (Py_ssize_t j = 0; j < nj; j++) {
                        double d0 = p0[j] + magic, d1 = p1[j] + magic, d2 = p2[j] + magic, d3 = p3[j] + magic;
                        int64_t m0, m1, m2, m3;
                        memcpy(&m0, &d0, 8);
                        memcpy(&m1, &d1, 8);
                        memcpy(&m2, &d2, 8);
                        memcpy(&m3, &d3, 8);
                        s0[j] = m0 + m1 + m2 - 3 * mb;
                        s1[j] = m1 - m2 - m3 + mb;
                    }
                }
                for (int b = 0; b < 2; b++) {
                    const int64_t *restrict q0 = s[0][b], *restrict q1 = s[1][b], *restrict q2 = s[2][b], *restrict q3 = s[3][b];
                    float *restrict r0 = rv[0][b], *restrict r1 = rv[1][b];
                    for (Py_ssize_t j = 0; j < nj; j++) {
                        int64_t z0 = q0[j] + q1[j] + q2[j] + b4, z1 = q1[j] - q2[j] - q3[j] + b4;
                        z0 = z0 > 0 ? z0 : 0;
                        z1 = z1 > 0 ? z1 : 0;
                        z0 >>= k + 2;
                        z1 >>= k + 2;
                        z0 = z0 < top ? z0 : top;
                        z1 = z1 < top ? z1 : top;
                        r0[j] = (float)(int32_t)z0;
                        r1[j] = (float)(int32_t)z1;
                    }
                }
                for (int a = 0; a < 2; a++) {
                    const Py_ssize_t y = 2 * (t0 + ti) + a;
                    if (y >= h) continue;
                    float *restrict orow = dv + (c * hp2 + 1 + 2 * y + sy) * wp2 + 1 + 4 * j0 + sx;
                    const Py_ssize_t nx = w - 2 * j0 < 2 * nj ? w - 2 * j0 : 2 * nj;
                    for (Py_ssize_t x = 0; x < nx; x++) orow[2 * x] = rv[a][x & 1][x >> 1];
                }
            }
    }
}

/* wino_post(m float64 (16, cout, nt*tw), bias int64 (cout), shift k, act_max, dst float32
 *           (cout/4, 2h+2, 2w+2), t0, nt, h, w): the output transform of wino_in's tiles in
 * int64 (m holds exact integers below 2^53, so the conversions are exact and the sums of 9
 * cannot overflow), giving y4 = 4 conv; then hidden_post's a = clip(floor((conv + b) 2^-k),
 * 0, act_max) and pixel shuffle in float64: y4 is a multiple of 4 below 2^55, exact as a
 * double, y4 / 4 + b is the direct path's acc + b (an integer below 2^53 by the tables'
 * accumulator bound), so every step is exact as in hidden_post. */
static PyObject *py_wino_post(PyObject *self, PyObject *args) {
    PyObject *mo, *bo, *dobj;
    Py_ssize_t k, amax, t0, nt, h, w;
    int fast = 0;
    if (!PyArg_ParseTuple(args, "OOnnOnnnn|p", &mo, &bo, &k, &amax, &dobj, &t0, &nt, &h, &w, &fast)) return NULL;
    Buf m, b, d;
    const BufArg ba[] = {{mo, &m, 8, 0, "m"}, {bo, &b, 8, 0, "bias"}, {dobj, &d, 4, 1, "dst"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0) goto done;
    {
        Py_ssize_t cout = nitems(&b), nc = cout / 4, wp2 = 2 * w + 2, tw = (w + 1) / 2, th = (h + 1) / 2;
        Py_ssize_t hp2 = 2 * h + 2;
        if (cout < 4 || cout % 4 || w < 1 || h < 1 || nt < 1 || t0 < 0 || t0 + nt > th || k < 0 || k > 62 || amax < 0 ||
            amax >= ((Py_ssize_t)1 << 31) || nitems(&m) != 16 * cout * nt * tw || nitems(&d) != nc * hp2 * wp2) {
            PyErr_SetString(PyExc_ValueError, "wino_post: inconsistent sizes");
            goto done;
        }
        const double *mv = (const double *)m.b.buf;
        const int64_t *bias = (const int64_t *)b.b.buf;
        float *dv = (float *)d.b.buf;
        Py_BEGIN_ALLOW_THREADS
        if (fast) wino_post_fast_loop(mv, bias, cout, nt, tw, (int)k, (int64_t)amax, dv, hp2, wp2, t0, h, w);
        else wino_post_loop(mv, bias, cout, nt, tw, (int)k, (int64_t)amax, dv, hp2, wp2, t0, h, w);
        Py_END_ALLOW_THREADS
        ret = Py_NewRef(Py_None);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

/* wino_last_out(m float32 (16, cout, nt*tw), norms float64 (16, nt*tw), t0, nt, h, w,
 *               v float32 (cout, nr*w), cn float64 (nr*w)), nr = min(h, 2(t0+nt)) - 2 t0:
 * the last layer's output transform. Output (a, b) of tile t is y4 = sum over i in P_a,
 * j in P_b of +-m_ij (P_0 = {0,1,2}, P_1 = {1,2,3}: the rows of A^T), summed in float64;
 * v = float32(y4 / 4) (4x the conv: U holds 2G, see wino_in). cn = sum over the same nine
 * ij of norms_ij[t] (||V_ij[:, t]||_2), so that |v - (conv without bias)| <= wscale_o * cn
 * with intnet's Winograd wscale (GEMM error gamma_cin ||U_ij[o]|| ||V_ij[:, t]|| per m_ij
 * by Cauchy-Schwarz, plus the float64 sums and the float32 rounding of v).
 * -> 0, or -1 when out of memory. */
ILC_SIMD static void wino_last_row(const float *m, Py_ssize_t plane, Py_ssize_t tw, double *s) {
    /* s[(2a + 0) tw + tj] = m_a0 + m_a1 + m_a2, s[(2a + 1) tw + tj] = m_a1 - m_a2 - m_a3 */
    for (int a = 0; a < 4; a++) {
        const float *restrict p0 = m + (4 * a) * plane, *restrict p1 = p0 + plane, *restrict p2 = p1 + plane,
                              *restrict p3 = p2 + plane;
        double *restrict s0 = s + (2 * a) * tw, *restrict s1 = s0 + tw;
        for (Py_ssize_t tj = 0; tj < tw; tj++) {
            double m0 = p0[tj], m1 = p1[tj], m2 = p2[tj], m3 = p3[tj];
            s0[tj] = m0 + m1 + m2;
            s1[tj] = m1 - m2 - m3;
        }
    }
}

ILC_SIMD static void wino_norm_row(const double *n, Py_ssize_t plane, Py_ssize_t tw, double *s) {
    for (int a = 0; a < 4; a++) {
        const double *restrict p0 = n + (4 * a) * plane, *restrict p1 = p0 + plane, *restrict p2 = p1 + plane,
                               *restrict p3 = p2 + plane;
        double *restrict s0 = s + (2 * a) * tw, *restrict s1 = s0 + tw;
        for (Py_ssize_t tj = 0; tj < tw; tj++) {
            s0[tj] = p0[tj] + p1[tj] + p2[tj];
            s1[tj] = p1[tj] + p2[tj] + p3[tj];
        }
    }
}

/* output row a (0, 1) of a tile row from s (wino_last_row's layout): y[2 tj + b], tj < tw;
 * sgn -1 for v (A^T's second row has signs +1, -1, -1), +1 for the norms */
ILC_SIMD static void wino_out_row(const double *s, Py_ssize_t tw, int a, double sgn, double *y) {
    for (int b = 0; b < 2; b++) {
        const double *restrict q0 = s + b * tw, *restrict q1 = s + (2 + b) * tw, *restrict q2 = s + (4 + b) * tw,
                               *restrict q3 = s + (6 + b) * tw;
        double *restrict yb = y + b * tw;
        if (a == 0)
            for (Py_ssize_t tj = 0; tj < tw; tj++) yb[tj] = q0[tj] + q1[tj] + q2[tj];
        else
            for (Py_ssize_t tj = 0; tj < tw; tj++) yb[tj] = q1[tj] + sgn * q2[tj] + sgn * q3[tj];
    }
}

/* dst[2 tj + b] = y[b tw + tj] for the w outputs of a row (w odd: the last tile's second
 * column is not an output) */
ILC_SIMD static void wino_store_v(const double *restrict y, Py_ssize_t tw, Py_ssize_t w, float *restrict dst) {
    const double *restrict y0 = y, *restrict y1 = y + tw;
    const Py_ssize_t pairs = w / 2;
    for (Py_ssize_t tj = 0; tj < pairs; tj++) {
        dst[2 * tj] = (float)(y0[tj] * 0.25);
        dst[2 * tj + 1] = (float)(y1[tj] * 0.25);
    }
    if (w & 1) dst[w - 1] = (float)(y0[pairs] * 0.25);
}

ILC_SIMD static void wino_store_cn(const double *restrict y, Py_ssize_t tw, Py_ssize_t w, double *restrict dst) {
    const double *restrict y0 = y, *restrict y1 = y + tw;
    const Py_ssize_t pairs = w / 2;
    for (Py_ssize_t tj = 0; tj < pairs; tj++) {
        dst[2 * tj] = y0[tj] * (1.0 + 1e-12);
        dst[2 * tj + 1] = y1[tj] * (1.0 + 1e-12);
    }
    if (w & 1) dst[w - 1] = y0[pairs] * (1.0 + 1e-12);
}

static int wino_last_loop(const float *mv, const double *nv, Py_ssize_t cout, Py_ssize_t nt, Py_ssize_t tw,
                          Py_ssize_t t0, Py_ssize_t h, Py_ssize_t w, float *vv, double *cn) {
    const Py_ssize_t np_ = nt * tw, plane = cout * np_, r0 = 2 * t0;
    const Py_ssize_t nrw = ((h < 2 * (t0 + nt) ? h : 2 * (t0 + nt)) - r0) * w;
    double *s = (double *)malloc((size_t)(10 * tw) * sizeof(double)), *y = s ? s + 8 * tw : NULL;
    if (!s) return -1;
    for (Py_ssize_t o = -1; o < cout; o++) /* o = -1: the norms (cn) */
        for (Py_ssize_t ti = 0; ti < nt; ti++) {
            if (o < 0) wino_norm_row(nv + ti * tw, np_, tw, s);
            else wino_last_row(mv + o * np_ + ti * tw, plane, tw, s);
            for (int a = 0; a < 2; a++) {
                const Py_ssize_t row = 2 * (t0 + ti) + a;
                if (row >= h) continue;
                wino_out_row(s, tw, a, o < 0 ? 1.0 : -1.0, y); /* +-1 * x is exact */
                const Py_ssize_t at = (row - r0) * w;
                if (o < 0) wino_store_cn(y, tw, w, cn + at);
                else wino_store_v(y, tw, w, vv + o * nrw + at);
            }
        }
    free(s);
    return 0;
}

static PyObject *py_wino_last_out(PyObject *self, PyObject *args) {
    PyObject *mo, *no, *vo, *co;
    Py_ssize_t t0, nt, h, w;
    if (!PyArg_ParseTuple(args, "OOnnnnOO", &mo, &no, &t0, &nt, &h, &w, &vo, &co)) return NULL;
    Buf m, nb, v, c;
    const BufArg ba[] = {{mo, &m, 4, 0, "m"}, {no, &nb, 8, 0, "norms"}, {vo, &v, 4, 1, "v"}, {co, &c, 8, 1, "cn"}};
    PyObject *ret = NULL;
    if (get_bufs(ba, NBUF(ba)) < 0) goto done;
    {
        const Py_ssize_t tw = (w + 1) / 2, th = (h + 1) / 2;
        const Py_ssize_t np_ = nt * tw, cout = np_ > 0 ? nitems(&m) / (16 * np_) : 0;
        const Py_ssize_t nr = (h < 2 * (t0 + nt) ? h : 2 * (t0 + nt)) - 2 * t0;
        if (w < 1 || h < 1 || nt < 1 || t0 < 0 || t0 + nt > th || cout < 1 || nitems(&m) != 16 * cout * np_ ||
            nitems(&nb) != 16 * np_ || nitems(&v) != cout * nr * w || nitems(&c) != nr * w) {
            PyErr_SetString(PyExc_ValueError, "wino_last_out: inconsistent sizes");
            goto done;
        }
        const float *mv = (const float *)m.b.buf;
        const double *nv = (const double *)nb.b.buf;
        float *vv = (float *)v.b.buf;
        double *cv = (double *)c.b.buf;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = wino_last_loop(mv, nv, cout, nt, tw, t0, h, w, vv, cv);
        Py_END_ALLOW_THREADS
        ret = rc < 0 ? PyErr_NoMemory() : Py_NewRef(Py_None);
    }
done:
    return rel_bufs(ba, NBUF(ba), ret);
}

static PyObject *py_set_error_class(PyObject *self, PyObject *cls) {
    Py_XINCREF(cls);
    Py_XSETREF(BitstreamError, cls);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"quantize_cdf", py_quantize_cdf, METH_VARARGS, "float64 pmf -> 24-bit CDF (uint32 bytes), constriction's leaky quantisation"},
    {"build_lut", py_build_lut, METH_VARARGS, "decoder lookup tables for a CDF table"},
    {"encode_w", py_encode_w, METH_VARARGS, "hyper stream encoder"},
    {"decode_w", py_decode_w, METH_VARARGS, "hyper stream decoder"},
    {"encode_y", py_encode_y, METH_VARARGS, "latent stream encoder"},
    {"decode_y", py_decode_y, METH_VARARGS, "latent stream decoder"},
    {"encode_segments", py_encode_segments, METH_VARARGS, "generic encoder: list of (kind, param, symbols)"},
    {"decode_segments", py_decode_segments, METH_VARARGS, "generic decoder: list of (kind, param, count)"},
    {"last_layer_post", py_last_layer_post, METH_VARARGS, "integer scale net: threshold index with an error bound"},
    {"im2col", py_im2col, METH_VARARGS, "integer scale net: 3x3 im2col of a zero-padded float32 input"},
    {"hidden_post", py_hidden_post, METH_VARARGS, "integer scale net: bias, shift, floor, clip, pixel shuffle"},
    {"wino_in", py_wino_in, METH_VARARGS, "integer scale net: Winograd F(2x2,3x3) input transform"},
    {"wino_post", py_wino_post, METH_VARARGS, "integer scale net: Winograd output transform + hidden_post"},
    {"wino_last_out", py_wino_last_out, METH_VARARGS, "integer scale net: last layer's Winograd output transform (float32)"},
    {"last_post", py_last_post, METH_VARARGS, "integer scale net: last layer's threshold index with its column norms"},
    {"set_error_class", py_set_error_class, METH_O, "exception class for corrupted streams"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_rangecoder", "constriction-compatible range coder (C)", -1, methods};

PyMODINIT_FUNC PyInit__rangecoder(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "PRECISION", PREC);
    PyModule_AddIntConstant(m, "LUT_SIZE", LUT_SIZE);
    PyModule_AddIntConstant(m, "ABI", 1);
    return m;
}
