/* dsvc._treerows: the rows two encoded trees do not share, found on their bytes.
 *
 * Why this exists (docs/performance.md, "Diff of changed folders"): a diff of two
 * versions reads only the folders whose ids differ, but in each such folder it used to
 * unpack every row of both sides into Python tuples and compare them. With 1% of 1M
 * files rewritten across 1,000 folders that is 2M tuples built to find 20,000 rows, and
 * it was 3/4 of list_modified_files. A tree is a msgpack array of rows sorted by the
 * UTF-8 bytes of their names (docs/format.md), so a merge of the two arrays on their
 * raw bytes finds the rows that differ without building any object.
 *
 * The result is a superset of the rows whose values differ: two encodings of one value
 * (a non-minimal integer) compare unequal here. The caller decodes and validates the
 * rows returned, exactly as a full decode would, and drops pairs whose values are
 * equal. Anything this parser does not expect (not an array of arrays whose first item
 * is a string, names out of order, truncated bytes) returns None: the caller then takes
 * the Python path, whose full decode names the problem.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} cur_t;

static int read_be(cur_t *c, int n, uint64_t *out) {
    if (c->end - c->p < n) return -1;
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | c->p[i];
    c->p += n;
    *out = v;
    return 0;
}

static int advance(cur_t *c, uint64_t n) {
    if ((uint64_t)(c->end - c->p) < n) return -1;
    c->p += n;
    return 0;
}

/* Reads one msgpack header. Sets *items to the number of nested objects that follow
 * (array items, or twice a map's pairs) and skips any payload (str, bin, ext, number).
 * For a str header, *str and *str_len give its bytes. -1 on truncated or invalid bytes. */
static int header(cur_t *c, uint64_t *items, const unsigned char **str, uint64_t *str_len) {
    uint64_t n;
    *items = 0;
    *str = NULL;
    if (c->p >= c->end) return -1;
    unsigned char t = *c->p++;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
    if (t >= 0x80 && t <= 0x8f) { *items = 2u * (t & 0x0f); return 0; }
    if (t >= 0x90 && t <= 0x9f) { *items = t & 0x0f; return 0; }
    if (t >= 0xa0 && t <= 0xbf) { n = t & 0x1f; goto string; }
    switch (t) {
    case 0xd9: if (read_be(c, 1, &n)) return -1; goto string;
    case 0xda: if (read_be(c, 2, &n)) return -1; goto string;
    case 0xdb: if (read_be(c, 4, &n)) return -1; goto string;
    case 0xc4: if (read_be(c, 1, &n)) return -1; return advance(c, n);
    case 0xc5: if (read_be(c, 2, &n)) return -1; return advance(c, n);
    case 0xc6: if (read_be(c, 4, &n)) return -1; return advance(c, n);
    case 0xc7: if (read_be(c, 1, &n)) return -1; return advance(c, n + 1);
    case 0xc8: if (read_be(c, 2, &n)) return -1; return advance(c, n + 1);
    case 0xc9: if (read_be(c, 4, &n)) return -1; return advance(c, n + 1);
    case 0xca: return advance(c, 4);
    case 0xcb: return advance(c, 8);
    case 0xcc: case 0xd0: return advance(c, 1);
    case 0xcd: case 0xd1: return advance(c, 2);
    case 0xce: case 0xd2: return advance(c, 4);
    case 0xcf: case 0xd3: return advance(c, 8);
    case 0xd4: return advance(c, 2);
    case 0xd5: return advance(c, 3);
    case 0xd6: return advance(c, 5);
    case 0xd7: return advance(c, 9);
    case 0xd8: return advance(c, 17);
    case 0xdc: if (read_be(c, 2, &n)) return -1; *items = n; return 0;
    case 0xdd: if (read_be(c, 4, &n)) return -1; *items = n; return 0;
    case 0xde: if (read_be(c, 2, &n)) return -1; *items = 2 * n; return 0;
    case 0xdf: if (read_be(c, 4, &n)) return -1; *items = 2 * n; return 0;
    default: return -1; /* 0xc1: never used */
    }
string:
    *str = c->p;
    *str_len = n;
    return advance(c, n);
}

typedef struct {
    const unsigned char *start; /* the row's bytes */
    size_t len;
    const unsigned char *name;
    size_t name_len;
} row_t;

/* Splits an encoded tree into its rows; -1 when it is not an array of arrays whose
 * first item is a string, with names strictly ascending, and nothing after it. Rows
 * are nested no deeper than their own array: a deeper item (an array in a row) is
 * skipped by counting, without recursion, so no input can exhaust the stack. */
static int split_rows(const unsigned char *data, size_t size, row_t **out, size_t *count) {
    cur_t c = {data, data + size};
    uint64_t n, items, name_len;
    const unsigned char *s;
    *out = NULL;
    *count = 0;
    unsigned char t = size ? data[0] : 0;
    if (!((t >= 0x90 && t <= 0x9f) || t == 0xdc || t == 0xdd)) return -1;
    if (header(&c, &n, &s, &name_len)) return -1;
    if (n > size) return -1; /* every row takes at least one byte */
    row_t *rows = malloc((n ? n : 1) * sizeof(row_t));
    if (!rows) return -1;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *start = c.p;
        if (c.p >= c.end) goto bad;
        t = *c.p;
        if (!((t >= 0x90 && t <= 0x9f) || t == 0xdc || t == 0xdd)) goto bad;
        uint64_t left;
        if (header(&c, &left, &s, &name_len) || left == 0) goto bad;
        if (header(&c, &items, &s, &name_len) || s == NULL) goto bad;
        rows[i].name = s;
        rows[i].name_len = name_len;
        left = left - 1 + items;
        while (left) {
            if (header(&c, &items, &s, &name_len)) goto bad;
            if (items > (uint64_t)(c.end - c.p)) goto bad; /* each item takes a byte */
            left = left - 1 + items;
        }
        rows[i].start = start;
        rows[i].len = (size_t)(c.p - start);
        if (i) {
            size_t m = rows[i - 1].name_len < name_len ? rows[i - 1].name_len : name_len;
            int r = memcmp(rows[i - 1].name, rows[i].name, m);
            if (r > 0 || (r == 0 && rows[i - 1].name_len >= rows[i].name_len)) goto bad;
        }
    }
    if (c.p != c.end) goto bad;
    *out = rows;
    *count = (size_t)n;
    return 0;
bad:
    free(rows);
    return -1;
}

static int name_cmp(const row_t *a, const row_t *b) {
    size_t m = a->name_len < b->name_len ? a->name_len : b->name_len;
    int r = memcmp(a->name, b->name, m);
    if (r) return r;
    return a->name_len < b->name_len ? -1 : (a->name_len > b->name_len ? 1 : 0);
}

/* A msgpack array of the rows marked in keep[] (their bytes, in order). */
static PyObject *pack_rows(const row_t *rows, size_t n, const char *keep) {
    size_t count = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i]) { count++; total += rows[i].len; }
    size_t head = count < 16 ? 1 : (count < 65536 ? 3 : 5);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head + total));
    if (!out) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    if (head == 1) {
        *p++ = (unsigned char)(0x90 | count);
    } else if (head == 3) {
        *p++ = 0xdc; *p++ = (unsigned char)(count >> 8); *p++ = (unsigned char)count;
    } else {
        *p++ = 0xdd;
        for (int s = 24; s >= 0; s -= 8) *p++ = (unsigned char)(count >> s);
    }
    for (size_t i = 0; i < n; i++)
        if (keep[i]) { memcpy(p, rows[i].start, rows[i].len); p += rows[i].len; }
    return out;
}

static PyObject *py_row_delta(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*:row_delta", &a, &b)) return NULL;
    row_t *ra = NULL, *rb = NULL;
    size_t na = 0, nb = 0;
    char *ka = NULL, *kb = NULL;
    int state = 0; /* 0: not a tree this parser takes, 1: done, -1: out of memory */
    Py_BEGIN_ALLOW_THREADS
    if (!split_rows(a.buf, (size_t)a.len, &ra, &na) &&
        !split_rows(b.buf, (size_t)b.len, &rb, &nb)) {
        ka = calloc(na ? na : 1, 1);
        kb = calloc(nb ? nb : 1, 1);
        state = -1;
        if (ka && kb) {
            size_t i = 0, j = 0;
            while (i < na && j < nb) {
                int r = name_cmp(&ra[i], &rb[j]);
                if (r < 0) {
                    ka[i++] = 1;
                } else if (r > 0) {
                    kb[j++] = 1;
                } else {
                    if (ra[i].len != rb[j].len || memcmp(ra[i].start, rb[j].start, ra[i].len))
                        ka[i] = kb[j] = 1;
                    i++;
                    j++;
                }
            }
            for (; i < na; i++) ka[i] = 1;
            for (; j < nb; j++) kb[j] = 1;
            state = 1;
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (state == 1) {
        PyObject *pa = pack_rows(ra, na, ka);
        PyObject *pb = pa ? pack_rows(rb, nb, kb) : NULL;
        if (pa && pb) result = PyTuple_Pack(2, pa, pb);
        Py_XDECREF(pa);
        Py_XDECREF(pb);
    } else if (state == 0) {
        result = Py_NewRef(Py_None);
    } else {
        PyErr_NoMemory();
    }
    free(ra);
    free(rb);
    free(ka);
    free(kb);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return result;
}

static PyMethodDef methods[] = {
    {"row_delta", py_row_delta, METH_VARARGS,
     "row_delta(a, b) -> (rows_a, rows_b) | None\n\n"
     "The rows of encoded tree ``a`` whose bytes are not in ``b`` and the other way\n"
     "round, each as the msgpack array of those rows in their order. None when either\n"
     "is not an array of rows with string names in strictly ascending byte order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dsvc._treerows",
    "The rows two encoded trees do not share (see dsvc/treerows.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__treerows(void) { return PyModule_Create(&module); }
