/* dsvc._fsbatch: file-system calls in batches, with the GIL released for the batch.
 *
 * Why this exists (docs/performance.md, "Native batches"): a scan of 1M files costs one
 * lstat per file, and a copy of 1M small files costs create + write + utime + fstat +
 * close per file. From Python each of those syscalls releases and takes the GIL again
 * and builds a Python object (an os.stat_result costs more than the lstat itself), so
 * two threads spend their time handing the GIL to each other instead of running in
 * the kernel side by side. Here a whole folder is one call: the loop runs in C with
 * the GIL released, and the result is built once at the end.
 *
 * Both functions are optional accelerators: dsvc/fsbatch.py falls back to Python code
 * with the same results when this module is not built (tests run both ways).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* -- a growable byte buffer (no GIL needed) ---------------------------------------- */

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

/* -- msgpack, exactly as msgpack-python's Packer(use_bin_type=True) packs ----------- */

static int put_be(buf_t *b, unsigned char tag, uint64_t v, int nbytes) {
    unsigned char out[9];
    out[0] = tag;
    for (int i = 0; i < nbytes; i++) out[1 + i] = (unsigned char)(v >> (8 * (nbytes - 1 - i)));
    return buf_put(b, out, 1 + (size_t)nbytes);
}

static int mp_uint(buf_t *b, uint64_t v) {
    if (v < 0x80) {
        unsigned char c = (unsigned char)v;
        return buf_put(b, &c, 1);
    }
    if (v <= 0xff) return put_be(b, 0xcc, v, 1);
    if (v <= 0xffff) return put_be(b, 0xcd, v, 2);
    if (v <= 0xffffffffULL) return put_be(b, 0xce, v, 4);
    return put_be(b, 0xcf, v, 8);
}

static int mp_int(buf_t *b, int64_t v) {
    if (v >= 0) return mp_uint(b, (uint64_t)v);
    if (v >= -32) {
        unsigned char c = (unsigned char)(int8_t)v;
        return buf_put(b, &c, 1);
    }
    if (v >= -128) return put_be(b, 0xd0, (uint64_t)v & 0xff, 1);
    if (v >= -32768) return put_be(b, 0xd1, (uint64_t)v & 0xffff, 2);
    if (v >= INT64_C(-2147483648)) return put_be(b, 0xd2, (uint64_t)v & 0xffffffffULL, 4);
    return put_be(b, 0xd3, (uint64_t)v, 8);
}

static int mp_str(buf_t *b, const char *s, size_t n) {
    int r;
    if (n < 32) {
        unsigned char c = (unsigned char)(0xa0 | n);
        r = buf_put(b, &c, 1);
    } else if (n < 256) {
        r = put_be(b, 0xd9, n, 1);
    } else if (n < 65536) {
        r = put_be(b, 0xda, n, 2);
    } else {
        r = put_be(b, 0xdb, n, 4);
    }
    return r < 0 ? r : buf_put(b, s, n);
}

static int mp_array_header(buf_t *b, size_t n) {
    if (n < 16) {
        unsigned char c = (unsigned char)(0x90 | n);
        return buf_put(b, &c, 1);
    }
    if (n < 65536) return put_be(b, 0xdc, n, 2);
    return put_be(b, 0xdd, n, 4);
}

/* -- list_regular ------------------------------------------------------------------ */

enum { LIST_OK = 0, LIST_FALLBACK = 1, LIST_ERRNO = 2, LIST_NOMEM = 3 };

typedef struct {
    buf_t names;  /* msgpack str of each regular file's name, listing order */
    buf_t sigs;   /* msgpack [size, mtime_ns, ctime_ns, ino, dev, mode] of each */
    buf_t others; /* NUL-terminated names of every other entry, listing order */
    size_t count;
    size_t nothers;
    uint64_t nbytes;
    int err;
} listing_t;

static void listing_free(listing_t *l) {
    free(l->names.data);
    free(l->sigs.data);
    free(l->others.data);
}

/* A name the Python scan also takes without validating it: ASCII without a backslash
   (dsvc.ingest._list_entries). Anything else makes the caller list the folder in
   Python, which validates names and names the file in its error. */
static int plain_name(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80 || c == '\\') return 0;
    }
    return 1;
}

static int ns_of(int64_t sec, long nsec, int64_t *out) {
    int64_t t;
    if (__builtin_mul_overflow(sec, INT64_C(1000000000), &t)) return -1;
    if (__builtin_add_overflow(t, (int64_t)nsec, out)) return -1;
    return 0;
}

static int list_folder(const char *path, const char *skip, listing_t *l) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        l->err = errno;
        return LIST_ERRNO;
    }
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        l->err = errno;
        close(fd);
        return LIST_ERRNO;
    }
    int rc = LIST_OK;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (de == NULL) {
            if (errno != 0) {
                l->err = errno;
                rc = LIST_ERRNO;
            }
            break;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
        size_t n = strlen(name);
        if (de->d_type == DT_REG) {
            if (!plain_name(name, n) || strcmp(name, skip) == 0) {
                rc = LIST_FALLBACK;
                break;
            }
            struct stat st;
            int64_t mtime, ctime;
            if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)
                && ns_of(st.st_mtim.tv_sec, st.st_mtim.tv_nsec, &mtime) == 0
                && ns_of(st.st_ctim.tv_sec, st.st_ctim.tv_nsec, &ctime) == 0) {
                unsigned char six = 0x96;
                if (mp_str(&l->names, name, n) < 0 || buf_put(&l->sigs, &six, 1) < 0
                    || mp_int(&l->sigs, (int64_t)st.st_size) < 0 || mp_int(&l->sigs, mtime) < 0
                    || mp_int(&l->sigs, ctime) < 0 || mp_uint(&l->sigs, (uint64_t)st.st_ino) < 0
                    || mp_uint(&l->sigs, (uint64_t)st.st_dev) < 0
                    || mp_uint(&l->sigs, (uint64_t)st.st_mode) < 0) {
                    rc = LIST_NOMEM;
                    break;
                }
                l->count++;
                l->nbytes += (uint64_t)st.st_size;
                continue;
            }
            /* gone, replaced by another type since the listing, or not stat-able:
               the Python rules decide (and name the file in any error) */
        }
        if (buf_put(&l->others, name, n + 1) < 0) {
            rc = LIST_NOMEM;
            break;
        }
        l->nothers++;
    }
    closedir(dir); /* closes fd */
    return rc;
}

static PyObject *py_list_regular(PyObject *self, PyObject *args) {
    PyObject *pathobj = NULL;
    const char *skip;
    if (!PyArg_ParseTuple(args, "O&s:list_regular", PyUnicode_FSConverter, &pathobj, &skip))
        return NULL;
    listing_t l;
    memset(&l, 0, sizeof l);
    int rc;
    const char *path = PyBytes_AS_STRING(pathobj);
    Py_BEGIN_ALLOW_THREADS
    rc = list_folder(path, skip, &l);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (rc == LIST_ERRNO) {
        errno = l.err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, pathobj);
        goto done;
    }
    if (rc == LIST_NOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc == LIST_FALLBACK) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    buf_t head_n = {0}, head_s = {0};
    if (mp_array_header(&head_n, l.count) < 0 || mp_array_header(&head_s, l.count) < 0) {
        free(head_n.data);
        free(head_s.data);
        PyErr_NoMemory();
        goto done;
    }
    PyObject *names = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head_n.len + l.names.len));
    PyObject *sigs = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head_s.len + l.sigs.len));
    PyObject *others = PyList_New((Py_ssize_t)l.nothers);
    if (names && sigs && others) {
        char *p = PyBytes_AS_STRING(names);
        memcpy(p, head_n.data, head_n.len);
        if (l.names.len) memcpy(p + head_n.len, l.names.data, l.names.len);
        p = PyBytes_AS_STRING(sigs);
        memcpy(p, head_s.data, head_s.len);
        if (l.sigs.len) memcpy(p + head_s.len, l.sigs.data, l.sigs.len);
        const char *o = l.others.data;
        int ok = 1;
        for (size_t i = 0; i < l.nothers; i++) {
            size_t n = strlen(o);
            PyObject *s = PyUnicode_DecodeFSDefaultAndSize(o, (Py_ssize_t)n);
            if (s == NULL) {
                ok = 0;
                break;
            }
            PyList_SET_ITEM(others, (Py_ssize_t)i, s);
            o += n + 1;
        }
        if (ok)
            result = Py_BuildValue("(OOnKO)", names, sigs, (Py_ssize_t)l.count,
                                   (unsigned long long)l.nbytes, others);
    }
    Py_XDECREF(names);
    Py_XDECREF(sigs);
    Py_XDECREF(others);
    free(head_n.data);
    free(head_s.data);
done:
    listing_free(&l);
    Py_DECREF(pathobj);
    return result;
}

/* -- write_files ------------------------------------------------------------------- */

typedef struct {
    PyObject *name; /* bytes (file-system encoding) */
    Py_buffer data;
    int have_data;
    unsigned int mode;
    int64_t mtime_ns;
    struct stat st;
} wfile_t;

static void free_files(wfile_t *f, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(f[i].name);
        if (f[i].have_data) PyBuffer_Release(&f[i].data);
    }
    PyMem_Free(f);
}

/* Create, fill, date and stat one file under dirfd; 0 or an errno (nothing left). */
static int write_one(int dirfd, wfile_t *f) {
    const char *name = PyBytes_AS_STRING(f->name);
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    (mode_t)f->mode);
    if (fd < 0) return errno;
    const char *p = f->data.buf;
    Py_ssize_t left = f->data.len;
    int err = 0;
    while (left > 0) {
        ssize_t w = write(fd, p, (size_t)left);
        if (w < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        p += w;
        left -= w;
    }
    if (!err) {
        struct timespec ts[2];
        /* floor division: a time before 1970 has a negative second and 0..999999999 ns */
        int64_t sec = f->mtime_ns / 1000000000, nsec = f->mtime_ns % 1000000000;
        if (nsec < 0) {
            sec -= 1;
            nsec += 1000000000;
        }
        ts[0].tv_sec = ts[1].tv_sec = (time_t)sec;
        ts[0].tv_nsec = ts[1].tv_nsec = (long)nsec;
        if (futimens(fd, ts) != 0 || fstat(fd, &f->st) != 0) err = errno;
    }
    if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    if (err) unlinkat(dirfd, name, 0);
    return err;
}

static PyObject *py_write_files(PyObject *self, PyObject *args) {
    PyObject *dirobj = NULL, *names, *datas, *modes, *mtimes;
    if (!PyArg_ParseTuple(args, "O&O!O!O!O!:write_files", PyUnicode_FSConverter, &dirobj,
                          &PyList_Type, &names, &PyList_Type, &datas, &PyList_Type, &modes,
                          &PyList_Type, &mtimes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    if (PyList_GET_SIZE(datas) != n || PyList_GET_SIZE(modes) != n
        || PyList_GET_SIZE(mtimes) != n) {
        Py_DECREF(dirobj);
        PyErr_SetString(PyExc_ValueError, "write_files: lists of different lengths");
        return NULL;
    }
    wfile_t *files = PyMem_Calloc((size_t)(n ? n : 1), sizeof(wfile_t));
    if (files == NULL) {
        Py_DECREF(dirobj);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        wfile_t *f = &files[i];
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(names, i), &f->name)) goto fail;
        if (strchr(PyBytes_AS_STRING(f->name), '/') != NULL) {
            PyErr_Format(PyExc_ValueError, "write_files: %R is not a plain name",
                         PyList_GET_ITEM(names, i));
            goto fail;
        }
        if (PyObject_GetBuffer(PyList_GET_ITEM(datas, i), &f->data, PyBUF_SIMPLE) < 0) goto fail;
        f->have_data = 1;
        f->mode = (unsigned int)PyLong_AsUnsignedLong(PyList_GET_ITEM(modes, i));
        f->mtime_ns = PyLong_AsLongLong(PyList_GET_ITEM(mtimes, i));
        if (PyErr_Occurred()) goto fail;
    }
    int err = 0;
    Py_ssize_t done = 0;
    const char *dir = PyBytes_AS_STRING(dirobj);
    Py_BEGIN_ALLOW_THREADS
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        err = errno;
    } else {
        for (; done < n; done++) {
            err = write_one(dirfd, &files[done]);
            if (err) break;
        }
        close(dirfd);
    }
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyObject *fname = dirobj;
        if (done < n) {
            fname = PyBytes_FromFormat("%s/%s", dir, PyBytes_AS_STRING(files[done].name));
            if (fname == NULL) goto fail;
        }
        PyObject *decoded = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(fname),
                                                             PyBytes_GET_SIZE(fname));
        if (fname != dirobj) Py_DECREF(fname);
        if (decoded != NULL) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, decoded);
            Py_DECREF(decoded);
        }
        goto fail;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct stat *st = &files[i].st;
        int64_t mtime = 0, ctime = 0;
        ns_of(st->st_mtim.tv_sec, st->st_mtim.tv_nsec, &mtime);
        ns_of(st->st_ctim.tv_sec, st->st_ctim.tv_nsec, &ctime);
        PyObject *row = Py_BuildValue("(KLLKLK)", (unsigned long long)st->st_ino,
                                      (long long)mtime, (long long)ctime,
                                      (unsigned long long)st->st_nlink, (long long)st->st_size,
                                      (unsigned long long)st->st_mode);
        if (row == NULL) {
            Py_DECREF(out);
            goto fail;
        }
        PyList_SET_ITEM(out, i, row);
    }
    free_files(files, n);
    Py_DECREF(dirobj);
    return out;
fail:
    free_files(files, n);
    Py_DECREF(dirobj);
    return NULL;
}

/* -- link_files -------------------------------------------------------------------- */

static int no_link(int e) { return e == ENOENT || e == EXDEV || e == EMLINK || e == EPERM || e == ENOTSUP; }

static PyObject *py_link_files(PyObject *self, PyObject *args) {
    PyObject *srcobj = NULL, *dstobj = NULL, *names;
    if (!PyArg_ParseTuple(args, "O&O&O!:link_files", PyUnicode_FSConverter, &srcobj,
                          PyUnicode_FSConverter, &dstobj, &PyList_Type, &names))
        goto bad_args;
    Py_ssize_t n = PyList_GET_SIZE(names);
    PyObject **enc = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    struct stat *sts = PyMem_Calloc((size_t)(n ? n : 1), sizeof(struct stat));
    char *linked = PyMem_Calloc((size_t)(n ? n : 1), 1);
    PyObject *out = NULL;
    if (enc == NULL || sts == NULL || linked == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(names, i), &enc[i])) goto done;
        if (strchr(PyBytes_AS_STRING(enc[i]), '/') != NULL) {
            PyErr_Format(PyExc_ValueError, "link_files: %R is not a plain name",
                         PyList_GET_ITEM(names, i));
            goto done;
        }
    }
    int err = 0;
    Py_ssize_t at = 0;
    const char *src = PyBytes_AS_STRING(srcobj), *dst = PyBytes_AS_STRING(dstobj);
    const char *failed = dst;
    Py_BEGIN_ALLOW_THREADS
    int sfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int dfd = sfd < 0 ? -1 : open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0 && no_link(errno)) {
        sfd = -2; /* the source folder is gone: nothing links, nothing fails */
    } else if (sfd < 0) {
        err = errno;
        failed = src;
    } else if (dfd < 0) {
        err = errno;
    }
    for (; !err && sfd >= 0 && at < n; at++) {
        const char *name = PyBytes_AS_STRING(enc[at]);
        if (linkat(sfd, name, dfd, name, 0) != 0) {
            if (no_link(errno)) continue;
            err = errno;
            failed = NULL;
            break;
        }
        if (fstatat(dfd, name, &sts[at], AT_SYMLINK_NOFOLLOW) != 0) {
            err = errno;
            failed = NULL;
            break;
        }
        linked[at] = 1;
    }
    if (sfd >= 0) close(sfd);
    if (dfd >= 0) close(dfd);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyObject *fname;
        if (failed != NULL) {
            fname = PyUnicode_DecodeFSDefault(failed);
        } else {
            PyObject *path = PyBytes_FromFormat("%s/%s", dst, PyBytes_AS_STRING(enc[at]));
            fname = path == NULL ? NULL
                                 : PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(path),
                                                                    PyBytes_GET_SIZE(path));
            Py_XDECREF(path);
        }
        if (fname != NULL) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, fname);
            Py_DECREF(fname);
        }
        goto done;
    }
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row;
        if (!linked[i]) {
            row = Py_NewRef(Py_None);
        } else {
            struct stat *st = &sts[i];
            int64_t mtime = 0, ctime = 0;
            ns_of(st->st_mtim.tv_sec, st->st_mtim.tv_nsec, &mtime);
            ns_of(st->st_ctim.tv_sec, st->st_ctim.tv_nsec, &ctime);
            row = Py_BuildValue("(KLLKLK)", (unsigned long long)st->st_ino, (long long)mtime,
                                (long long)ctime, (unsigned long long)st->st_nlink,
                                (long long)st->st_size, (unsigned long long)st->st_mode);
            if (row == NULL) {
                Py_CLEAR(out);
                goto done;
            }
        }
        PyList_SET_ITEM(out, i, row);
    }
done:
    if (enc != NULL)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(enc[i]);
    PyMem_Free(enc);
    PyMem_Free(sts);
    PyMem_Free(linked);
    Py_DECREF(srcobj);
    Py_DECREF(dstobj);
    return out;
bad_args:
    Py_XDECREF(srcobj);
    Py_XDECREF(dstobj);
    return NULL;
}

/* -- small files read whole --------------------------------------------------------- */

typedef struct {
    PyObject *path; /* bytes (file-system encoding) */
    Py_ssize_t size; /* as scanned: read up to size + 1 bytes to see a grown file */
    char *data;
    Py_ssize_t got;
    int err;
    struct stat st;
} rfile_t;

/* Open, read whole (up to size + 1 bytes), fstat and close one file; 0 or an errno. */
static int read_one(rfile_t *f) {
    int fd = open(PyBytes_AS_STRING(f->path), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = 0;
    size_t want = (size_t)f->size + 1;
    f->data = malloc(want);
    if (!f->data) {
        close(fd);
        return ENOMEM;
    }
    while ((size_t)f->got < want) {
        ssize_t r = read(fd, f->data + f->got, want - (size_t)f->got);
        if (r < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        if (r == 0) break;
        f->got += r;
    }
    if (!err && fstat(fd, &f->st) != 0) err = errno;
    close(fd);
    return err;
}

static PyObject *py_read_files(PyObject *self, PyObject *args) {
    PyObject *paths, *sizes;
    if (!PyArg_ParseTuple(args, "O!O!:read_files", &PyList_Type, &paths, &PyList_Type, &sizes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (PyList_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "read_files: paths and sizes differ in length");
        return NULL;
    }
    rfile_t *f = PyMem_Calloc(n ? (size_t)n : 1, sizeof(rfile_t));
    if (!f) return PyErr_NoMemory();
    PyObject *out = NULL;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(paths, i), &f[i].path)) goto done;
        f[i].size = PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
        if (f[i].size == -1 && PyErr_Occurred()) goto done;
        if (f[i].size < 0) {
            PyErr_SetString(PyExc_ValueError, "read_files: a negative size");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i++) f[i].err = read_one(&f[i]);
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    if (!out) goto done;
    for (i = 0; i < n; i++) {
        PyObject *item;
        int64_t mt = 0, ct = 0;
        if (!f[i].err && (ns_of((int64_t)f[i].st.st_mtim.tv_sec, f[i].st.st_mtim.tv_nsec, &mt) ||
                          ns_of((int64_t)f[i].st.st_ctim.tv_sec, f[i].st.st_ctim.tv_nsec, &ct)))
            f[i].err = -1; /* a time beyond int64 ns: the caller reads it in Python */
        if (f[i].err) {
            item = Py_BuildValue("(Oi)", Py_None, f[i].err);
        } else {
            item = Py_BuildValue("(y#LLLKK)", f[i].data, f[i].got, (long long)f[i].st.st_size,
                                 (long long)mt, (long long)ct,
                                 (unsigned long long)f[i].st.st_ino,
                                 (unsigned long long)f[i].st.st_dev);
        }
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_XDECREF(f[j].path);
        free(f[j].data);
    }
    PyMem_Free(f);
    return out;
}

static PyMethodDef methods[] = {
    {"list_regular", py_list_regular, METH_VARARGS,
     "list_regular(folder, skip_name) -> (names, sigs, count, nbytes, others) | None\n\n"
     "The regular files of one folder with their lstat, in listing order: ``names`` and\n"
     "``sigs`` are the msgpack bytes of the list of names and of the list of\n"
     "[size, mtime_ns, ctime_ns, ino, dev, st_mode]; ``others`` the names of every other\n"
     "entry. None when a regular file's name is not ASCII without a backslash, or is\n"
     "``skip_name``: list that folder in Python. OSError when the folder cannot be read."},
    {"write_files", py_write_files, METH_VARARGS,
     "write_files(folder, names, datas, modes, mtimes_ns) -> [(ino, mtime_ns, ctime_ns,\n"
     "nlink, size, st_mode)]\n\n"
     "Create each new file ``folder/name`` (O_EXCL, O_NOFOLLOW) with its mode, write its\n"
     "bytes, set its atime and mtime, and stat it. The first failure removes that file\n"
     "and raises OSError naming it; the files before it stay."},
    {"link_files", py_link_files, METH_VARARGS,
     "link_files(src_folder, dst_folder, names) -> [(ino, mtime_ns, ctime_ns, nlink, size,\n"
     "st_mode) | None]\n\n"
     "Hard-link each ``src_folder/name`` to the new ``dst_folder/name`` and stat it. None\n"
     "where the source is gone or the filesystem cannot link it (EXDEV, EMLINK, EPERM,\n"
     "ENOTSUP): the caller writes that file instead. Any other failure raises OSError\n"
     "naming the file; the links made before it stay."},
    {"read_files", py_read_files, METH_VARARGS,
     "read_files(paths, sizes) -> [(data, size, mtime_ns, ctime_ns, ino, dev) | (None, errno)]\n\n"
     "Open, read whole (at most ``sizes[i] + 1`` bytes: a grown file shows), fstat and close\n"
     "each file, with the GIL released for the batch. A failure is that file's errno; -1\n"
     "for a time that does not fit int64 nanoseconds (read that one in Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dsvc._fsbatch",
    "File-system calls in batches with the GIL released (see dsvc/fsbatch.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fsbatch(void) { return PyModule_Create(&module); }
