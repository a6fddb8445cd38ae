/* dsvc._treerows: encoded trees (and the msgpack arrays of folder summaries)
 * compared and spliced on their bytes.
 *
 * Why this exists (docs/performance.md, "Changed folders and diffs on the encoded
 * bytes"): a diff of two versions reads only the folders whose ids differ, but in
 * each such folder it used to unpack every row of both sides into Python tuples and
 * compare them. With 1% of 1M files rewritten across 1,000 folders that is 2M tuples
 * built to find 20,000 rows, and it was 3/4 of list_modified_files. A tree is a
 * msgpack array of rows sorted by the UTF-8 bytes of their names (docs/format.md), so
 * a merge of the two arrays on their raw bytes finds the rows that differ without
 * building any object.
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

static int is_array(unsigned char t) { return (t >= 0x90 && t <= 0x9f) || t == 0xdc || t == 0xdd; }

/* Skips one whole object (nested items counted, not recursed: no input can exhaust
 * the stack). For a str, *str and *str_len give its bytes. */
static int skip_object(cur_t *c, const unsigned char **str, uint64_t *str_len) {
    uint64_t items, left;
    const unsigned char *s;
    uint64_t n;
    if (header(c, &left, str, str_len)) return -1;
    while (left) {
        if (header(c, &items, &s, &n)) return -1;
        if (items > (uint64_t)(c->end - c->p)) return -1; /* each item takes a byte */
        left = left - 1 + items;
    }
    return 0;
}

/* Splits a msgpack array (exactly ``size`` bytes) into its items' spans. */
static int split_array(const unsigned char *data, size_t size, row_t **out, size_t *count) {
    cur_t c = {data, data + size};
    uint64_t n, name_len;
    const unsigned char *s;
    *out = NULL;
    *count = 0;
    if (!size || !is_array(data[0])) return -1;
    if (header(&c, &n, &s, &name_len)) return -1;
    if (n > size) return -1; /* every item takes at least one byte */
    row_t *items = malloc((n ? n : 1) * sizeof(row_t));
    if (!items) return -1;
    for (uint64_t i = 0; i < n; i++) {
        items[i].start = c.p;
        items[i].name = NULL;
        items[i].name_len = 0;
        if (skip_object(&c, &s, &name_len)) goto bad;
        items[i].len = (size_t)(c.p - items[i].start);
    }
    if (c.p != c.end) goto bad;
    *out = items;
    *count = (size_t)n;
    return 0;
bad:
    free(items);
    return -1;
}

/* Splits an encoded tree into its rows; -1 when it is not an array of arrays whose
 * first item is a string, with names strictly ascending, and nothing after it. */
static int split_rows(const unsigned char *data, size_t size, row_t **out, size_t *count) {
    row_t *rows;
    size_t n;
    if (split_array(data, size, &rows, &n)) return -1;
    for (size_t i = 0; i < n; i++) {
        cur_t c = {rows[i].start, rows[i].start + rows[i].len};
        uint64_t left, name_len;
        const unsigned char *s;
        if (!is_array(*c.p) || header(&c, &left, &s, &name_len) || left == 0) goto bad;
        if (header(&c, &left, &s, &name_len) || s == NULL) goto bad;
        rows[i].name = s;
        rows[i].name_len = name_len;
        if (i) {
            size_t m = rows[i - 1].name_len < name_len ? rows[i - 1].name_len : name_len;
            int r = memcmp(rows[i - 1].name, rows[i].name, m);
            if (r > 0 || (r == 0 && rows[i - 1].name_len >= rows[i].name_len)) goto bad;
        }
    }
    *out = rows;
    *count = n;
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

/* -- a changed folder of a re-ingest: its stats compared and its tree spliced --------
 *
 * A folder re-ingested with a few files rewritten keeps the names, order and stats of
 * all the others. Its summary holds the last listing as msgpack arrays, packed by the
 * same packer as the new listing, so the stats that changed are the array items whose
 * bytes differ, and the new tree is the old one with those files' rows replaced
 * (dsvc/ingest.py, _TreeBuilder._splice). */

static PyObject *py_skip(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "y*n:skip", &a, &offset)) return NULL;
    PyObject *result;
    if (offset < 0 || offset > a.len) {
        result = Py_NewRef(Py_None);
    } else {
        cur_t c = {(const unsigned char *)a.buf + offset, (const unsigned char *)a.buf + a.len};
        const unsigned char *s;
        uint64_t n;
        if (skip_object(&c, &s, &n))
            result = Py_NewRef(Py_None);
        else
            result = PyLong_FromSsize_t((Py_ssize_t)(c.p - (const unsigned char *)a.buf));
    }
    PyBuffer_Release(&a);
    return result;
}

static PyObject *py_array_delta(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*:array_delta", &a, &b)) return NULL;
    row_t *ia = NULL, *ib = NULL;
    size_t na = 0, nb = 0;
    PyObject *result = NULL;
    int parsed;
    Py_BEGIN_ALLOW_THREADS
    parsed = !split_array(a.buf, (size_t)a.len, &ia, &na) &&
             !split_array(b.buf, (size_t)b.len, &ib, &nb) && na == nb;
    Py_END_ALLOW_THREADS
    if (!parsed) {
        result = Py_NewRef(Py_None);
    } else if ((result = PyList_New(0)) != NULL) {
        for (size_t i = 0; i < na; i++) {
            if (ia[i].len == ib[i].len && !memcmp(ia[i].start, ib[i].start, ia[i].len)) continue;
            PyObject *k = PyLong_FromSize_t(i);
            if (!k || PyList_Append(result, k)) {
                Py_XDECREF(k);
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(k);
        }
    }
    free(ia);
    free(ib);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return result;
}

static PyObject *py_array_items(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a;
    PyObject *positions;
    if (!PyArg_ParseTuple(args, "y*O!:array_items", &a, &PyList_Type, &positions)) return NULL;
    row_t *items = NULL;
    size_t n = 0;
    PyObject *result = NULL;
    if (split_array(a.buf, (size_t)a.len, &items, &n)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t k = PyList_GET_SIZE(positions);
    if ((result = PyList_New(k)) == NULL) goto done;
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(positions, j));
        if (i == -1 && PyErr_Occurred()) { Py_CLEAR(result); goto done; }
        if (i < 0 || (size_t)i >= n) {
            PyErr_SetString(PyExc_IndexError, "array_items: position out of range");
            Py_CLEAR(result);
            goto done;
        }
        PyObject *v = PyBytes_FromStringAndSize((const char *)items[i].start, (Py_ssize_t)items[i].len);
        if (!v) { Py_CLEAR(result); goto done; }
        PyList_SET_ITEM(result, j, v);
    }
done:
    free(items);
    PyBuffer_Release(&a);
    return result;
}

/* An integer object at *c as int64; -1 for any other type or a uint64 above INT64_MAX. */
static int read_int(cur_t *c, int64_t *out) {
    if (c->p >= c->end) return -1;
    unsigned char t = *c->p++;
    uint64_t v;
    if (t <= 0x7f) { *out = t; return 0; }
    if (t >= 0xe0) { *out = (int8_t)t; return 0; }
    int n;
    switch (t) {
    case 0xcc: case 0xd0: n = 1; break;
    case 0xcd: case 0xd1: n = 2; break;
    case 0xce: case 0xd2: n = 4; break;
    case 0xcf: case 0xd3: n = 8; break;
    default: return -1;
    }
    if (read_be(c, n, &v)) return -1;
    if (t >= 0xd0) { /* signed: sign-extend */
        int shift = 64 - 8 * n;
        *out = (int64_t)(v << shift) >> shift;
        return 0;
    }
    if (v > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)v;
    return 0;
}

static PyObject *py_max_field(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a;
    Py_ssize_t field;
    if (!PyArg_ParseTuple(args, "y*n:max_field", &a, &field)) return NULL;
    row_t *items = NULL;
    size_t n = 0;
    int ok = field >= 0 && !split_array(a.buf, (size_t)a.len, &items, &n);
    int64_t best = INT64_MIN;
    for (size_t i = 0; ok && i < n; i++) {
        cur_t c = {items[i].start, items[i].start + items[i].len};
        uint64_t len, sl;
        const unsigned char *s;
        int64_t v;
        if (!is_array(*c.p) || header(&c, &len, &s, &sl) || (uint64_t)field >= len) { ok = 0; break; }
        for (Py_ssize_t f = 0; f < field && ok; f++) ok = !skip_object(&c, &s, &sl);
        if (!ok || read_int(&c, &v)) { ok = 0; break; }
        if (v > best) best = v;
    }
    free(items);
    PyBuffer_Release(&a);
    if (!ok || n == 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(best);
}

static PyObject *py_splice_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a, b;
    Py_ssize_t expect;
    if (!PyArg_ParseTuple(args, "y*y*n:splice_rows", &a, &b, &expect)) return NULL;
    row_t *ra = NULL, *rb = NULL;
    size_t na = 0, nb = 0, changed = 0;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = !split_rows(a.buf, (size_t)a.len, &ra, &na) && !split_rows(b.buf, (size_t)b.len, &rb, &nb) &&
         expect >= 0 && na == (size_t)expect;
    /* every new row replaces an old row of the same name: the names stay the same */
    for (size_t i = 0, j = 0; ok && j < nb; i++) {
        if (i == na) { ok = 0; break; }
        int r = name_cmp(&ra[i], &rb[j]);
        if (r > 0) { ok = 0; break; }
        if (r < 0) continue;
        changed += ra[i].len != rb[j].len || memcmp(ra[i].start, rb[j].start, ra[i].len);
        ra[i] = rb[j]; /* the new row goes in the old one's place */
        j++;
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (!ok) {
        result = Py_NewRef(Py_None);
    } else if (nb == 0) {
        result = Py_BuildValue("(y#n)", a.buf, a.len, (Py_ssize_t)0);
    } else {
        char *keep = malloc(na ? na : 1);
        if (keep) {
            memset(keep, 1, na ? na : 1);
            PyObject *tree = pack_rows(ra, na, keep);
            free(keep);
            if (tree) {
                result = Py_BuildValue("(Nn)", tree, (Py_ssize_t)changed);
            }
        } else {
            PyErr_NoMemory();
        }
    }
    free(ra);
    free(rb);
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
    {"skip", py_skip, METH_VARARGS,
     "skip(data, offset) -> end | None\n\n"
     "The offset just after the msgpack object that starts at ``offset``."},
    {"array_delta", py_array_delta, METH_VARARGS,
     "array_delta(a, b) -> [position] | None\n\n"
     "The positions where the items of msgpack arrays ``a`` and ``b`` differ in bytes;\n"
     "None when either is not one array or their lengths differ."},
    {"array_items", py_array_items, METH_VARARGS,
     "array_items(a, positions) -> [bytes] | None\n\n"
     "The encoded items of msgpack array ``a`` at ``positions``."},
    {"max_field", py_max_field, METH_VARARGS,
     "max_field(a, field) -> int | None\n\n"
     "The largest integer at index ``field`` of the arrays in msgpack array ``a``; None\n"
     "when any item is not such an array (or the array is empty)."},
    {"splice_rows", py_splice_rows, METH_VARARGS,
     "splice_rows(tree, rows, expect) -> (tree, changed) | None\n\n"
     "Encoded tree ``tree`` (``expect`` rows) with each row of the encoded rows ``rows``\n"
     "in place of its row of the same name, and how many rows changed in bytes. None\n"
     "when either is not a tree, ``tree`` has not ``expect`` rows, or a row of ``rows``\n"
     "names no row of ``tree``."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dsvc._treerows",
    "Encoded trees compared and spliced on their bytes (see objects.differing_entries).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__treerows(void) { return PyModule_Create(&module); }
