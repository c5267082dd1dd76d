/* Optional accelerator for the hot paths of the Deferred probe (dashboard/probes/deferreds.py)
 * and of the loop probe (the poller-wait hook and the watchdog's wait; see "The loop probe's
 * hot path" below), the connection probe's per-request hooks (bytes in and out) and busy time
 * by handler (HandlerTimer: each call the reactor makes, timed and counted in C).
 *
 * The Deferred probe's hot path runs for every Deferred: find the frame that created it,
 * count it at that site, keep it in the nursery until it fires. In Python the frame lookup is
 * sys._getframe(1), which makes CPython allocate a frame object for the caller (about
 * 2,100 instructions on 3.11, the largest part of the probe's cost). Here the caller is
 * read from the interpreter's own frame stack (code object and instruction offset, no
 * frame object), and the two patched methods are C callables, so neither adds a Python
 * frame either.
 *
 * Same semantics as the pure-Python path, which stays the fallback: the site is the first
 * complete frame outside Twisted's Deferred helpers (as sys._getframe sees frames),
 * succeed() results are counted as born fired, errors are handed to a Python callback and
 * never raised into the caller. The interpreter's internals it reads (the frame stack, one
 * flag of an instance) are in accel_frames/, one header per CPython version; hatch_build.py
 * builds the module only on the versions it lists, and skips it elsewhere.
 */
#define PY_SSIZE_T_CLEAN
#define Py_BUILD_CORE
#include <Python.h>
#include <structmember.h>
#include "accel_frames/frames.h" /* everything that differs between CPython versions */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Checked by dashboard/accel.py: bump whenever this module's interface changes. */
#define ACCEL_ABI 11

static PyObject *s_callbacks, *s_canceller_attr, *s_debug, *s_rd_ref, *s_called, *s_gi_code,
    *s_cr_code;

/* ---------------------------------------------------------------------------------------
 * SiteCounts: the counters of one creation site, a base class for the probe's _Site.
 */
typedef struct {
    PyObject_HEAD
    long long created;
    long long fired;
    long long lost;
} SiteCounts;

static PyMemberDef SiteCounts_members[] = {
    {"created", T_LONGLONG, offsetof(SiteCounts, created), 0, "Deferreds created here"},
    {"fired", T_LONGLONG, offsetof(SiteCounts, fired), 0, "of those, fired"},
    {"lost", T_LONGLONG, offsetof(SiteCounts, lost), 0, "of those, collected unfired"},
    {NULL},
};

static PyTypeObject SiteCountsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.SiteCounts",
    .tp_basicsize = sizeof(SiteCounts),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Counters of one Deferred creation site.",
    .tp_members = SiteCounts_members,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------
 * Tracker: the probe's hot-path state.
 */
typedef struct {
    PyCodeObject *code; /* strong */
    int lasti;
    PyObject *site; /* strong, a SiteCounts */
} SiteEntry;

/* A nursery entry: a new Deferred not fired yet, and its site (both strong). */
typedef struct {
    PyObject *deferred;
    PyObject *site;
} YoungEntry;

typedef struct {
    PyObject_HEAD
    PyObject *new_site;       /* callable(code, lineno) -> SiteCounts */
    PyObject *other;          /* SiteCounts for Deferreds with no Python caller */
    PyObject *on_error;       /* callable(exception) */
    PyObject *sweep;          /* callable() */
    PyObject *promoted_fired; /* callable(ref): a promoted Deferred fired */
    PyObject *original_init;
    PyObject *original_start;
    PyObject *succeed_code;
    PyObject *transparent; /* tuple of code objects, held for the pointer set */
    /* An inlineCallbacks function used as a callback: when the walk from a new Deferred
     * passes a frame of `generator_code` (whose first local is the generator it drives) and
     * then reaches one of `run_callbacks_code` (Deferred._runCallbacks), the Deferred is sited
     * at that generator's function. NULL: not done (another shape of Twisted). */
    PyObject *generator_code;
    PyObject *run_callbacks_code;
    PyCodeObject **tset;   /* open-addressing pointer set over `transparent` */
    size_t tmask;
    SiteEntry *sites; /* open-addressing table (code, lasti) -> site */
    size_t smask;
    size_t sused;
    size_t max_entries;
    /* The nursery: an open-addressing table keyed by the Deferred's address (linear probing,
     * deletion by backward shift), at most half full. Cheaper than a dict: no hashing call,
     * no entries array to compact, and little code, so fewer instruction-cache misses. */
    YoungEntry *young;
    size_t ymask;
    Py_ssize_t yused;
    Py_ssize_t nursery_limit;
    int inline_init;
    long long born_fired;
} Tracker;

static inline size_t
ptr_hash(const void *p, int extra)
{
    uint64_t h = ((uint64_t)(uintptr_t)p >> 4) ^ ((uint64_t)(uint32_t)extra << 29);
    h *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17);
}

#define YOUNG_MIN 64

/* Room for one more entry (the table at most half full). 0, or -1 with MemoryError set. */
static int
young_reserve(Tracker *t)
{
    size_t size = t->young == NULL ? 0 : t->ymask + 1;
    if ((size_t)(t->yused + 1) * 2 <= size) {
        return 0;
    }
    size_t grown = size == 0 ? YOUNG_MIN : size * 2;
    YoungEntry *table = PyMem_Calloc(grown, sizeof(YoungEntry));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < size; i++) {
        PyObject *d = t->young[i].deferred;
        if (d != NULL) {
            size_t j = ptr_hash(d, 0) & (grown - 1);
            while (table[j].deferred != NULL) {
                j = (j + 1) & (grown - 1);
            }
            table[j] = t->young[i];
        }
    }
    PyMem_Free(t->young);
    t->young = table;
    t->ymask = grown - 1;
    return 0;
}

/* Into the nursery (takes new references). 0, or -1 with MemoryError set. A Deferred
 * already there (its __init__ called again) gets the new site, as a dict would give it. */
static int
young_add(Tracker *t, PyObject *deferred, PyObject *site)
{
    if (young_reserve(t) < 0) {
        return -1;
    }
    size_t i = ptr_hash(deferred, 0) & t->ymask;
    while (t->young[i].deferred != NULL) {
        if (t->young[i].deferred == deferred) {
            PyObject *old = t->young[i].site;
            t->young[i].site = Py_NewRef(site);
            Py_DECREF(old); /* a site: the probe's tables hold it too */
            return 0;
        }
        i = (i + 1) & t->ymask;
    }
    t->young[i].deferred = Py_NewRef(deferred);
    t->young[i].site = Py_NewRef(site);
    t->yused++;
    return 0;
}

/* Out of the nursery: its site (a new reference), or NULL if it was not there (no error).
 * The caller holds a reference to `deferred`, so dropping the table's cannot free it. */
static PyObject *
young_pop(Tracker *t, PyObject *deferred)
{
    if (t->yused == 0) {
        return NULL;
    }
    size_t mask = t->ymask;
    size_t i = ptr_hash(deferred, 0) & mask;
    for (;;) {
        PyObject *d = t->young[i].deferred;
        if (d == NULL) {
            return NULL;
        }
        if (d == deferred) {
            break;
        }
        i = (i + 1) & mask;
    }
    PyObject *site = t->young[i].site;
    Py_DECREF(deferred);
    /* backward shift: move up each later entry of the run whose home is not in (i, j] */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        PyObject *d = t->young[j].deferred;
        if (d == NULL) {
            break;
        }
        size_t home = ptr_hash(d, 0) & mask;
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            t->young[i] = t->young[j];
            i = j;
        }
    }
    t->young[i].deferred = NULL;
    t->young[i].site = NULL;
    t->yused--;
    return site;
}

/* The nursery's entries as a new list of (Deferred, site) tuples; they stay in the table
 * (the sweep settles each one with `settle`). NULL with an error set if the list cannot be
 * made. Everything is allocated before the table is read: an allocation may run the garbage
 * collector, whose callbacks may create or fire Deferreds (on this thread, or on another one
 * it hands the GIL to), which changes the table; if its size changed meanwhile, this starts
 * again. Filling the tuples then allocates nothing, so the table holds still. */
static PyObject *
young_items(Tracker *t)
{
    for (;;) {
        Py_ssize_t n = t->yused;
        PyObject *out = PyList_New(n);
        if (out == NULL) {
            return NULL;
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *pair = PyTuple_New(2);
            if (pair == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, k, pair);
        }
        if (t->yused != n) {
            Py_DECREF(out);
            continue;
        }
        YoungEntry *table = t->young;
        size_t size = table == NULL ? 0 : t->ymask + 1;
        Py_ssize_t k = 0;
        for (size_t i = 0; i < size; i++) {
            if (table[i].deferred != NULL) {
                PyObject *pair = PyList_GET_ITEM(out, k++);
                PyTuple_SET_ITEM(pair, 0, Py_NewRef(table[i].deferred));
                PyTuple_SET_ITEM(pair, 1, Py_NewRef(table[i].site));
            }
        }
        assert(k == n);
        return out;
    }
}

/* Drop the nursery's references (detached first: dropping one may run any code). */
static void
young_clear(Tracker *t)
{
    YoungEntry *table = t->young;
    size_t size = table == NULL ? 0 : t->ymask + 1;
    t->young = NULL;
    t->ymask = 0;
    t->yused = 0;
    for (size_t i = 0; i < size; i++) {
        Py_XDECREF(table[i].deferred);
        Py_XDECREF(table[i].site);
    }
    PyMem_Free(table);
}

static int
is_transparent(Tracker *t, PyCodeObject *code)
{
    if (t->tset == NULL) {
        return 0;
    }
    size_t i = ptr_hash(code, 0) & t->tmask;
    for (;;) {
        PyCodeObject *c = t->tset[i];
        if (c == NULL) {
            return 0;
        }
        if (c == code) {
            return 1;
        }
        i = (i + 1) & t->tmask;
    }
}

static void
clear_sites(Tracker *t)
{
    if (t->sites == NULL) {
        return;
    }
    SiteEntry *sites = t->sites;
    size_t n = t->smask + 1;
    t->sites = NULL;
    t->smask = 0;
    t->sused = 0;
    for (size_t i = 0; i < n; i++) {
        Py_XDECREF(sites[i].code);
        Py_XDECREF(sites[i].site);
    }
    PyMem_Free(sites);
}

static int
grow_sites(Tracker *t)
{
    size_t old_n = t->sites == NULL ? 0 : t->smask + 1;
    size_t n = old_n ? old_n * 2 : 256;
    SiteEntry *fresh = PyMem_Calloc(n, sizeof(SiteEntry));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < old_n; i++) {
        SiteEntry *e = &t->sites[i];
        if (e->code == NULL) {
            continue;
        }
        size_t j = ptr_hash(e->code, e->lasti) & (n - 1);
        while (fresh[j].code != NULL) {
            j = (j + 1) & (n - 1);
        }
        fresh[j] = *e;
    }
    PyMem_Free(t->sites);
    t->sites = fresh;
    t->smask = n - 1;
    return 0;
}

/* The site for (code, lasti): a borrowed reference, or NULL with an exception set. */
static PyObject *
site_for(Tracker *t, PyCodeObject *code, int lasti)
{
    if (t->sites != NULL) {
        size_t i = ptr_hash(code, lasti) & t->smask;
        for (;;) {
            SiteEntry *e = &t->sites[i];
            if (e->code == NULL) {
                break;
            }
            if (e->code == code && e->lasti == lasti) {
                return e->site;
            }
            i = (i + 1) & t->smask;
        }
    }
    if (t->sused >= t->max_entries) {
        return t->other; /* bounded: past it, unseen instructions count as "other" */
    }
    /* lasti -1 keys a function as a whole (an inlineCallbacks function used as a callback) */
    int lineno = lasti < 0 ? code->co_firstlineno
                           : PyCode_Addr2Line(code, lasti * (int)sizeof(_Py_CODEUNIT));
    PyObject *site = PyObject_CallFunction(t->new_site, "Oi", (PyObject *)code, lineno);
    if (site == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(site, &SiteCountsType)) {
        Py_DECREF(site);
        PyErr_SetString(PyExc_TypeError, "new_site() must return a SiteCounts");
        return NULL;
    }
    if ((t->sused + 1) * 3 >= (t->sites == NULL ? 0 : (t->smask + 1) * 2) && grow_sites(t) < 0) {
        Py_DECREF(site);
        return NULL;
    }
    size_t i = ptr_hash(code, lasti) & t->smask;
    while (t->sites[i].code != NULL) {
        i = (i + 1) & t->smask;
    }
    Py_INCREF(code);
    t->sites[i].code = code;
    t->sites[i].lasti = lasti;
    t->sites[i].site = site; /* the table keeps the new reference */
    t->sused++;
    return site;
}

/* Hand the pending exception to on_error and clear it: 0. A BaseException that is not an
 * Exception (KeyboardInterrupt, SystemExit from a signal handler) is left set: -1, so it
 * propagates as it does on the Python path, which catches Exception only; so does one that
 * on_error itself raises. An Exception raised by on_error is dropped: the probe's errors
 * never reach the caller. */
static int
report_error(PyObject *on_error)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && on_error != NULL) {
        PyObject *r = PyObject_CallOneArg(on_error, value);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
                return -1;
            }
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

static inline rd_frame *
first_complete(rd_frame *f)
{
    while (f != NULL && rd_frame_incomplete(f)) {
        f = rd_frame_previous(f);
    }
    return f;
}

/* The site of the function whose generator (or coroutine) `driving` drives, keyed by its code
 * and -1: *site borrowed, or left NULL when the frame holds no generator. -1 on error. Only
 * for a Deferred made by an inlineCallbacks function used as a callback (not a hot path). */
static int
generator_site(Tracker *t, rd_frame *driving, PyObject **site)
{
    PyObject *gen = rd_frame_local0(driving);
    PyObject *name = NULL;
    if (gen == NULL) {
        return 0;
    }
    if (PyGen_CheckExact(gen)) {
        name = s_gi_code;
    }
    else if (PyCoro_CheckExact(gen)) {
        name = s_cr_code;
    }
    else {
        return 0;
    }
    PyObject *code = PyObject_GetAttr(gen, name);
    if (code == NULL) {
        return -1;
    }
    if (PyCode_Check(code)) {
        *site = site_for(t, (PyCodeObject *)code, -1);
    }
    Py_DECREF(code);
    return *site == NULL && PyErr_Occurred() ? -1 : 0;
}

/* Count a new Deferred at its creation site and put it in the nursery. 0, or -1 with a
 * non-Exception error set (see report_error). */
static int
track_new(Tracker *t, PyObject *deferred)
{
    PyThreadState *ts = PyThreadState_Get();
    rd_frame *f = first_complete(rd_current_frame(ts));
    PyObject *site;
    if (f != NULL && (PyObject *)rd_frame_code(f) == t->succeed_code) {
        t->born_fired++; /* succeed(): created fired, never pending: counted, not located */
        return 0;
    }
    rd_frame *driving = NULL; /* the frame that drives an inlineCallbacks generator */
    site = NULL;
    while (f != NULL && is_transparent(t, rd_frame_code(f))) {
        PyObject *code = (PyObject *)rd_frame_code(f);
        if (code == t->generator_code) {
            driving = f;
        }
        else if (code == t->run_callbacks_code && driving != NULL) {
            /* made by an inlineCallbacks function that is itself a callback: its site is that
             * function, not the code that fired the Deferred it was added to */
            if (generator_site(t, driving, &site) < 0) {
                return report_error(t->on_error);
            }
            if (site != NULL) {
                break;
            }
        }
        f = first_complete(rd_frame_previous(f));
    }
    if (site == NULL && f == NULL) {
        site = t->other;
    }
    else if (site == NULL) {
        site = site_for(t, rd_frame_code(f), rd_frame_lasti(f));
        if (site == NULL) {
            return report_error(t->on_error);
        }
    }
    /* Into the nursery first: if that fails (no memory) it is not counted at all. */
    if (young_add(t, deferred, site) < 0) {
        return report_error(t->on_error);
    }
    ((SiteCounts *)site)->created++;
    if (t->yused >= t->nursery_limit) {
        PyObject *r = PyObject_CallNoArgs(t->sweep);
        if (r == NULL) {
            return report_error(t->on_error);
        }
        Py_DECREF(r);
    }
    return 0;
}

static int count_first_fire(Tracker *t, PyObject *deferred);

/* Count a first firing: 0, or -1 with an error set that must propagate. */
static int
track_fired(Tracker *t, PyObject *deferred)
{
    /* As on the Python path, reading `called` is outside the guarded part. */
    PyObject *called = PyObject_GetAttr(deferred, s_called);
    if (called == NULL) {
        return -1;
    }
    int already = PyObject_IsTrue(called);
    Py_DECREF(called);
    if (already != 0) {
        return already < 0 ? -1 : 0;
    }
    return count_first_fire(t, deferred);
}

/* A Deferred's first firing: count it at its site. 0, or -1 with an error set that must
 * propagate (only what is not an Exception: a probe fault is reported, never raised). */
static int
count_first_fire(Tracker *t, PyObject *deferred)
{
    /* One lookup that takes the entry out: atomic under the GIL. */
    PyObject *site = young_pop(t, deferred);
    if (site != NULL) {
        ((SiteCounts *)site)->fired++;
        Py_DECREF(site);
        return 0;
    }
    PyObject *ref = PyObject_GetAttr(deferred, s_rd_ref);
    if (ref == NULL) {
        return report_error(t->on_error);
    }
    int failed = 0;
    if (ref != Py_None) { /* promoted: still tracked until now (rare: lived past a sweep) */
        PyObject *r = PyObject_CallOneArg(t->promoted_fired, ref);
        if (r == NULL) {
            failed = report_error(t->on_error);
        }
        Py_XDECREF(r);
    }
    Py_DECREF(ref);
    return failed;
}

static int
Tracker_traverse(Tracker *t, visitproc visit, void *arg)
{
    if (t->young != NULL) {
        for (size_t i = 0; i <= t->ymask; i++) {
            Py_VISIT(t->young[i].deferred);
            Py_VISIT(t->young[i].site);
        }
    }
    Py_VISIT(t->new_site);
    Py_VISIT(t->other);
    Py_VISIT(t->on_error);
    Py_VISIT(t->sweep);
    Py_VISIT(t->promoted_fired);
    Py_VISIT(t->original_init);
    Py_VISIT(t->original_start);
    Py_VISIT(t->succeed_code);
    Py_VISIT(t->transparent);
    Py_VISIT(t->generator_code);
    Py_VISIT(t->run_callbacks_code);
    if (t->sites != NULL) {
        for (size_t i = 0; i <= t->smask; i++) {
            Py_VISIT(t->sites[i].site);
        }
    }
    return 0;
}

static int
Tracker_clear(Tracker *t)
{
    young_clear(t);
    Py_CLEAR(t->new_site);
    Py_CLEAR(t->other);
    Py_CLEAR(t->on_error);
    Py_CLEAR(t->sweep);
    Py_CLEAR(t->promoted_fired);
    Py_CLEAR(t->original_init);
    Py_CLEAR(t->original_start);
    Py_CLEAR(t->succeed_code);
    Py_CLEAR(t->transparent);
    Py_CLEAR(t->generator_code);
    Py_CLEAR(t->run_callbacks_code);
    clear_sites(t);
    PyMem_Free(t->tset);
    t->tset = NULL;
    return 0;
}

static void
Tracker_dealloc(Tracker *t)
{
    PyObject_GC_UnTrack(t);
    Tracker_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int
Tracker_init(Tracker *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"new_site",       "other",          "on_error",
                             "sweep",          "promoted_fired", "original_init",
                             "original_start", "succeed_code",   "transparent",
                             "nursery_limit",  "inline_init",    "max_entries",
                             "generator_code", "run_callbacks_code", NULL};
    PyObject *new_site, *other, *on_error, *sweep, *promoted_fired, *original_init,
        *original_start, *succeed_code, *transparent, *generator_code,
        *run_callbacks_code;
    Py_ssize_t nursery_limit, max_entries;
    int inline_init;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OO!OOOOOOO!npnOO", kwlist, &new_site,
                                     &SiteCountsType, &other, &on_error, &sweep,
                                     &promoted_fired, &original_init, &original_start,
                                     &succeed_code, &PyTuple_Type, &transparent, &nursery_limit,
                                     &inline_init, &max_entries, &generator_code,
                                     &run_callbacks_code)) {
        return -1;
    }
    if ((generator_code != Py_None && !PyCode_Check(generator_code)) ||
        (run_callbacks_code != Py_None && !PyCode_Check(run_callbacks_code))) {
        PyErr_SetString(PyExc_TypeError, "generator_code and run_callbacks_code: code or None");
        return -1;
    }
    if (nursery_limit < 1 || max_entries < 0) {
        PyErr_SetString(PyExc_ValueError, "nursery_limit >= 1 and max_entries >= 0");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(transparent);
    size_t size = 16;
    while (size < (size_t)n * 2 + 1) {
        size *= 2;
    }
    PyCodeObject **tset = PyMem_Calloc(size, sizeof(PyCodeObject *));
    if (tset == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *code = PyTuple_GET_ITEM(transparent, k);
        if (!PyCode_Check(code)) {
            PyMem_Free(tset);
            PyErr_SetString(PyExc_TypeError, "transparent must hold code objects");
            return -1;
        }
        size_t i = ptr_hash(code, 0) & (size - 1);
        while (tset[i] != NULL && tset[i] != (PyCodeObject *)code) {
            i = (i + 1) & (size - 1);
        }
        tset[i] = (PyCodeObject *)code;
    }
    Tracker_clear(t);
    t->tset = tset;
    t->tmask = size - 1;
    t->new_site = Py_NewRef(new_site);
    t->other = Py_NewRef(other);
    t->on_error = Py_NewRef(on_error);
    t->sweep = Py_NewRef(sweep);
    t->promoted_fired = Py_NewRef(promoted_fired);
    t->original_init = Py_NewRef(original_init);
    t->original_start = Py_NewRef(original_start);
    t->succeed_code = Py_NewRef(succeed_code);
    t->transparent = Py_NewRef(transparent);
    if (generator_code != Py_None && run_callbacks_code != Py_None) {
        t->generator_code = Py_NewRef(generator_code);
        t->run_callbacks_code = Py_NewRef(run_callbacks_code);
    }
    t->nursery_limit = nursery_limit;
    t->max_entries = (size_t)max_entries;
    t->inline_init = inline_init;
    t->born_fired = 0;
    return 0;
}

static PyObject *
Tracker_get_born_fired(Tracker *t, void *closure)
{
    return PyLong_FromLongLong(t->born_fired);
}

static PyObject *
Tracker_get_entries(Tracker *t, void *closure)
{
    return PyLong_FromSize_t(t->sused);
}

static PyObject *
Tracker_get_young(Tracker *t, void *closure)
{
    return PyLong_FromSsize_t(t->yused);
}

static PyGetSetDef Tracker_getset[] = {
    {"born_fired", (getter)Tracker_get_born_fired, NULL, "succeed() results counted", NULL},
    {"young", (getter)Tracker_get_young, NULL, "Deferreds in the nursery", NULL},
    {"entries", (getter)Tracker_get_entries, NULL, "(code, offset) keys cached", NULL},
    {NULL},
};

static PyObject *Tracker_hook(Tracker *t, PyObject *kind);

static PyObject *
Tracker_first_fire(Tracker *t, PyObject *deferred)
{
    if (t->new_site == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Tracker not initialised");
        return NULL;
    }
    if (count_first_fire(t, deferred) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Tracker_young_items(Tracker *t, PyObject *Py_UNUSED(ignored))
{
    return young_items(t);
}

/* settle(deferred, ref): the sweep is done with a nursery Deferred. `ref` (a weak reference)
 * or None (it was lost) goes into its `_rd_ref` first, then it leaves the nursery: True if it
 * was still there. False means it fired meanwhile (counted then, from the nursery), so `ref`
 * must be dropped. In this order a firing on another thread is counted exactly once: before
 * the removal it finds the nursery entry, after it finds `ref`. */
static PyObject *
Tracker_settle(Tracker *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "settle(deferred, ref) takes 2 arguments");
        return NULL;
    }
    PyObject *deferred = args[0], *ref = args[1];
    if (ref != Py_None && PyObject_SetAttr(deferred, s_rd_ref, ref) < 0) {
        return NULL;
    }
    PyObject *site = young_pop(t, deferred);
    if (site == NULL) {
        Py_RETURN_FALSE;
    }
    Py_DECREF(site);
    Py_RETURN_TRUE;
}

/* The nursery entry of `deferred`, or NULL when it is not there. */
static YoungEntry *
young_find(Tracker *t, PyObject *deferred)
{
    if (t->young == NULL) {
        return NULL;
    }
    size_t i = ptr_hash(deferred, 0) & t->ymask;
    for (;;) {
        PyObject *d = t->young[i].deferred;
        if (d == NULL) {
            return NULL;
        }
        if (d == deferred) {
            return &t->young[i];
        }
        i = (i + 1) & t->ymask;
    }
}

/* site_of(deferred): its site while it is in the nursery, else None. */
static PyObject *
Tracker_site_of(Tracker *t, PyObject *deferred)
{
    YoungEntry *entry = young_find(t, deferred);
    if (entry == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(entry->site);
}

/* resite(deferred, site): give a nursery Deferred another site; its old site, or None if it
 * is not in the nursery (nothing changed). The caller moves the counts. Allocates nothing. */
static PyObject *
Tracker_resite(Tracker *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "resite(deferred, site) takes 2 arguments");
        return NULL;
    }
    PyObject *deferred = args[0], *site = args[1];
    if (!PyObject_TypeCheck(site, &SiteCountsType)) {
        PyErr_SetString(PyExc_TypeError, "resite(): site must be a SiteCounts");
        return NULL;
    }
    YoungEntry *entry = young_find(t, deferred);
    if (entry == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *old = entry->site; /* the table's reference becomes the caller's */
    entry->site = Py_NewRef(site);
    return old;
}

static PyObject *
Tracker_clear_nursery(Tracker *t, PyObject *Py_UNUSED(ignored))
{
    young_clear(t);
    Py_RETURN_NONE;
}

static PyMethodDef Tracker_methods[] = {
    {"young_items", (PyCFunction)Tracker_young_items, METH_NOARGS,
     "young_items() -> [(deferred, site), ...]: the nursery's entries (they stay)."},
    {"settle", (PyCFunction)(void (*)(void))Tracker_settle, METH_FASTCALL,
     "settle(deferred, ref | None) -> bool: set its _rd_ref, then take it out of the nursery; "
     "False if it had left (fired meanwhile)."},
    {"site_of", (PyCFunction)Tracker_site_of, METH_O,
     "site_of(deferred) -> site | None: its site while in the nursery."},
    {"resite", (PyCFunction)(void (*)(void))Tracker_resite, METH_FASTCALL,
     "resite(deferred, site) -> old site | None: give a nursery Deferred another site."},
    {"clear_nursery", (PyCFunction)Tracker_clear_nursery, METH_NOARGS,
     "clear_nursery(): drop the nursery's references (uninstall; allocates nothing)."},
    {"hook", (PyCFunction)Tracker_hook, METH_O,
     "hook('init' | 'fire'): the method to patch on Deferred."},
    {"first_fire", (PyCFunction)Tracker_first_fire, METH_O,
     "first_fire(deferred): count a Deferred's first firing (called by a recompiled "
     "_startRunCallbacks, after its already-called checks)."},
    {NULL},
};

static PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.Tracker",
    .tp_basicsize = sizeof(Tracker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot-path state of the Deferred probe.",
    .tp_traverse = (traverseproc)Tracker_traverse,
    .tp_clear = (inquiry)Tracker_clear,
    .tp_dealloc = (destructor)Tracker_dealloc,
    .tp_init = (initproc)Tracker_init,
    .tp_new = PyType_GenericNew,
    .tp_methods = Tracker_methods,
    .tp_getset = Tracker_getset,
};

/* ---------------------------------------------------------------------------------------
 * Hook: a method descriptor (binds like a function) patched onto Deferred.
 */
enum { HOOK_INIT = 0, HOOK_FIRE = 1 };

typedef struct {
    PyObject_HEAD
    Tracker *tracker;
    int kind;
    vectorcallfunc vectorcall;
    PyObject *dict; /* __name__, __qualname__, __wrapped__... set by the probe */
} Hook;

static PyObject *
call_original_init(Tracker *t, PyObject *self, PyObject *canceller)
{
    PyObject *args[2] = {self, canceller};
    return PyObject_Vectorcall(t->original_init, args, 2, NULL);
}

static PyObject *
init_body(Tracker *t, PyObject *self, PyObject *canceller)
{
    if (t->inline_init) {
        /* Twisted's own body (checked by the probe): saves a Python call per Deferred. */
        PyObject *callbacks = PyList_New(0);
        if (callbacks == NULL) {
            return NULL;
        }
        int failed = PyObject_SetAttr(self, s_callbacks, callbacks);
        Py_DECREF(callbacks);
        if (failed || PyObject_SetAttr(self, s_canceller_attr, canceller) < 0) {
            return NULL;
        }
        PyObject *debug = PyObject_GetAttr(self, s_debug);
        if (debug == NULL) {
            return NULL;
        }
        int on = PyObject_IsTrue(debug);
        Py_DECREF(debug);
        if (on < 0) {
            return NULL;
        }
        if (on) {
            PyObject *r = call_original_init(t, self, canceller);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    else {
        PyObject *r = call_original_init(t, self, canceller);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    /* On every instance, in the same place: promotion then assigns an existing key. */
    if (PyObject_SetAttr(self, s_rd_ref, Py_None) < 0) {
        return NULL;
    }
    if (track_new(t, self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Hook_vectorcall(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Tracker *t = h->tracker;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (h->kind == HOOK_FIRE) {
        if (nargs >= 1 && track_fired(t, args[0]) < 0) {
            return NULL;
        }
        return PyObject_Vectorcall(t->original_start, args, nargsf, kwnames);
    }
    /* __init__(self, canceller=None), positional or keyword */
    PyObject *self = nargs >= 1 ? args[0] : NULL;
    PyObject *canceller = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int plain = nargs <= 2;
    for (Py_ssize_t k = 0; plain && k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        if (canceller == NULL && PyUnicode_CompareWithASCIIString(name, "canceller") == 0) {
            canceller = args[nargs + k];
        }
        else if (self == NULL && PyUnicode_CompareWithASCIIString(name, "self") == 0) {
            self = args[nargs + k];
        }
        else {
            plain = 0;
        }
    }
    if (plain && self != NULL) {
        return init_body(t, self, canceller == NULL ? Py_None : canceller);
    }
    /* Anything else is the caller's mistake: Twisted's own __init__ reports it. */
    return PyObject_Vectorcall(t->original_init, args, nargsf, kwnames);
}

static PyObject *
Hook_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static int
Hook_traverse(Hook *h, visitproc visit, void *arg)
{
    Py_VISIT(h->tracker);
    Py_VISIT(h->dict);
    return 0;
}

static int
Hook_clear(Hook *h)
{
    Py_CLEAR(h->tracker);
    Py_CLEAR(h->dict);
    return 0;
}

static void
Hook_dealloc(Hook *h)
{
    PyObject_GC_UnTrack(h);
    Hook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyGetSetDef Hook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.Hook",
    .tp_basicsize = sizeof(Hook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR |
                Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A Deferred method patched by the Deferred probe.",
    .tp_traverse = (traverseproc)Hook_traverse,
    .tp_clear = (inquiry)Hook_clear,
    .tp_dealloc = (destructor)Hook_dealloc,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_dictoffset = offsetof(Hook, dict),
    .tp_getset = Hook_getset,
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = Hook_descr_get,
};

static PyObject *
Tracker_hook(Tracker *t, PyObject *kind)
{
    int k;
    if (PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, "init") == 0) {
        k = HOOK_INIT;
    }
    else if (PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, "fire") == 0) {
        k = HOOK_FIRE;
    }
    else {
        PyErr_SetString(PyExc_ValueError, "hook kind must be 'init' or 'fire'");
        return NULL;
    }
    if (t->new_site == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Tracker not initialised");
        return NULL;
    }
    Hook *h = PyObject_GC_New(Hook, &HookType);
    if (h == NULL) {
        return NULL;
    }
    h->tracker = (Tracker *)Py_NewRef(t);
    h->kind = k;
    h->vectorcall = (vectorcallfunc)Hook_vectorcall;
    h->dict = NULL;
    PyObject_GC_Track(h);
    return (PyObject *)h;
}


/* ---------------------------------------------------------------------------------------
 * dict_materialized(obj): a diagnostic for the tests. On 3.11+ an instance keeps its
 * attributes in an inline values array until something asks for its __dict__; from then on
 * it has a real dict and attribute access on it leaves the specialised fast path. True: it
 * has one; False: values still inline; None: the type does not manage its dict that way.
 */
static PyObject *
accel_dict_materialized(PyObject *module, PyObject *obj)
{
    if (!(Py_TYPE(obj)->tp_flags & Py_TPFLAGS_MANAGED_DICT)) {
        Py_RETURN_NONE;
    }
    return PyBool_FromLong(rd_dict_materialized(obj));
}

static PyMethodDef accel_methods[] = {
    {"dict_materialized", accel_dict_materialized, METH_O,
     "Whether obj's instance dict was materialised (tests)."},
    {NULL},
};

/* ---------------------------------------------------------------------------------------
 * The loop probe's hot path (dashboard/probes/loop.py, wait_hook.py and watchdog.py).
 *
 * Pulse: the state the wait hook writes on every loop iteration, in C fields, so that the
 * watchdog thread can wait for a block *without the GIL*. A Python watchdog thread that wakes
 * ten times a second to read the tick costs a busy reactor a GIL hand-over each time
 * (measured: a bare Klein server lost 1.1% of its throughput under wrk to a Python thread
 * that only woke 10 times a second, 1.9% at 50). wait_busy() releases the GIL and returns
 * only when the current busy span has reached the threshold: the watchdog takes the GIL
 * for real blocks only.
 *
 * TimedWait: the wrapper around the poller wait, the pure-Python timed_wait's twin (same
 * bookkeeping, same exceptions propagated; see report_error for one that record_error
 * raises), without a Python frame per iteration.
 */
typedef struct {
    PyObject_HEAD
    double tick;       /* start of the current busy span, reactor-clock s; +inf while waiting */
    long long spans;   /* waits completed */
    double idle_s;     /* seconds inside the wait */
    double busy_max_s; /* longest block of the interval (written by the Python side) */
    PyObject *captured;
    long long generation; /* bumped by interrupt(): ends the waits of older watchdogs */
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} Pulse;

static PyMemberDef Pulse_members[] = {
    {"tick", T_DOUBLE, offsetof(Pulse, tick), 0, "start of the current busy span"},
    {"spans", T_LONGLONG, offsetof(Pulse, spans), 0, "poller waits completed"},
    {"idle_s", T_DOUBLE, offsetof(Pulse, idle_s), 0, "seconds inside the poller wait"},
    {"busy_max_s", T_DOUBLE, offsetof(Pulse, busy_max_s), 0, "longest block this interval"},
    {"captured", T_OBJECT, offsetof(Pulse, captured), 0, "(tick, stack) from the watchdog"},
    {"generation", T_LONGLONG, offsetof(Pulse, generation), READONLY, "interrupt() count"},
    {NULL},
};

static double
wall_now(void)
{
    /* time.time()'s value: CLOCK_REALTIME in nanoseconds, then seconds as a double */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    return (double)ns / 1e9;
}

static inline double
load_tick(Pulse *p)
{
    double tick;
    __atomic_load(&p->tick, &tick, __ATOMIC_RELAXED);
    return tick;
}

static inline void
store_tick(Pulse *p, double tick)
{
    __atomic_store(&p->tick, &tick, __ATOMIC_RELAXED);
}

static PyObject *
Pulse_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Pulse() takes no arguments");
        return NULL;
    }
    Pulse *p = (Pulse *)type->tp_alloc(type, 0);
    if (p == NULL) {
        return NULL;
    }
    p->tick = INFINITY;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&p->mutex, NULL);
    return (PyObject *)p;
}

static int
Pulse_traverse(Pulse *p, visitproc visit, void *arg)
{
    Py_VISIT(p->captured);
    return 0;
}

static int
Pulse_clear(Pulse *p)
{
    Py_CLEAR(p->captured);
    return 0;
}

static void
Pulse_dealloc(Pulse *p)
{
    PyObject_GC_UnTrack(p);
    Pulse_clear(p);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mutex);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* wait_busy(threshold_s, looked, min_sleep_s, generation) -> float | None
 *
 * Sleeps, without the GIL, until the current busy span (tick, wall-clock seconds) has lasted
 * threshold_s, and returns its tick; a span whose tick equals `looked` is not returned again.
 * Returns None once interrupt() was called after `generation` was read. Sleeps until the span
 * would reach the threshold (at least min_sleep_s, at most threshold_s), so it wakes about
 * 1 / threshold_s times a second, never taking the GIL for those wakes. */
static PyObject *
Pulse_wait_busy(Pulse *p, PyObject *args)
{
    double threshold_s, looked, min_sleep_s;
    long long generation;
    if (!PyArg_ParseTuple(args, "dddL:wait_busy", &threshold_s, &looked, &min_sleep_s,
                          &generation)) {
        return NULL;
    }
    if (!(threshold_s > 0) || !isfinite(threshold_s) || !(min_sleep_s > 0)) {
        PyErr_SetString(PyExc_ValueError, "threshold_s and min_sleep_s must be > 0 and finite");
        return NULL;
    }
    double found = NAN;
    int current;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->mutex);
    while ((current = (p->generation == generation))) {
        double tick = load_tick(p);
        double delay = threshold_s;
        if (isfinite(tick) && tick != looked) {
            double remaining = tick + threshold_s - wall_now();
            if (remaining <= 0) {
                found = tick;
                break;
            }
            delay = remaining < min_sleep_s ? min_sleep_s : remaining;
            delay = delay > threshold_s ? threshold_s : delay;
        }
        delay = delay > 3600.0 ? 3600.0 : delay; /* a huge threshold: wake hourly, no overflow */
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        double whole = floor(delay);
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)((delay - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cond, &p->mutex, &deadline);
    }
    pthread_mutex_unlock(&p->mutex);
    Py_END_ALLOW_THREADS
    if (!current) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(found);
}

static PyObject *
Pulse_interrupt(Pulse *p, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->mutex);
    p->generation++;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mutex);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef Pulse_methods[] = {
    {"wait_busy", (PyCFunction)Pulse_wait_busy, METH_VARARGS,
     "Sleep without the GIL until the busy span reaches threshold_s; its tick, or None."},
    {"interrupt", (PyCFunction)Pulse_interrupt, METH_NOARGS,
     "End every wait_busy() of an older generation."},
    {NULL},
};

static PyTypeObject PulseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.Pulse",
    .tp_basicsize = sizeof(Pulse),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The loop probe's pulse, waited on by the watchdog without the GIL.",
    .tp_traverse = (traverseproc)Pulse_traverse,
    .tp_clear = (inquiry)Pulse_clear,
    .tp_dealloc = (destructor)Pulse_dealloc,
    .tp_members = Pulse_members,
    .tp_methods = Pulse_methods,
    .tp_new = Pulse_new,
};

#define MAX_LAG_BOUNDS 64

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *wait;         /* the poller wait wrapped */
    PyObject *clock;        /* the reactor clock (called: time.time may be patched in tests) */
    PyObject *reactor;      /* for reactor._pendingTimedCalls */
    PyObject *lag;          /* LagCounters: sum_s, late_max_s */
    PyObject *counts;       /* lag.counts, a list that never changes identity */
    PyObject *end_block;    /* callable(now) */
    PyObject *record_error; /* callable(exception) */
    Pulse *pulse;
    double threshold_s;
    double bounds[MAX_LAG_BOUNDS];
    Py_ssize_t nbounds;
    int has_heap;
} TimedWait;

static PyObject *s_pending_timed_calls, *s_time, *s_sum_s, *s_late_max_s, *s_one;

static int
timed_now(TimedWait *w, double *out)
{
    PyObject *r = PyObject_CallNoArgs(w->clock);
    if (r == NULL) {
        return -1;
    }
    double v = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *out = v;
    return 0;
}

/* attr += add (as floats); or attr = max(attr, value) when add is 0 and keep_max is set */
static int
float_attr_update(PyObject *obj, PyObject *name, double value, int keep_max)
{
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) {
        return -1;
    }
    double v = PyFloat_AsDouble(old);
    Py_DECREF(old);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (keep_max && !(value > v)) {
        return 0;
    }
    PyObject *updated = PyFloat_FromDouble(keep_max ? value : v + value);
    if (updated == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttr(obj, name, updated);
    Py_DECREF(updated);
    return rc;
}

/* The earliest pending delayed call, if already due: its lateness into the lag counters.
 * 0, or -1 with a non-Exception error set (an Exception goes to record_error). */
static int
timed_lateness(TimedWait *w, double now)
{
    PyObject *heap = PyObject_GetAttr(w->reactor, s_pending_timed_calls);
    if (heap == NULL) {
        return report_error(w->record_error);
    }
    if (!PyList_Check(heap) || PyList_GET_SIZE(heap) == 0) {
        Py_DECREF(heap);
        return 0;
    }
    PyObject *first = Py_NewRef(PyList_GET_ITEM(heap, 0));
    Py_DECREF(heap);
    PyObject *due = PyObject_GetAttr(first, s_time);
    Py_DECREF(first);
    if (due == NULL) {
        return report_error(w->record_error);
    }
    double at = PyFloat_AsDouble(due);
    Py_DECREF(due);
    if (at == -1.0 && PyErr_Occurred()) {
        return report_error(w->record_error);
    }
    double late = now - at;
    if (!(late > 0.0)) {
        return 0;
    }
    Py_ssize_t lo = 0, hi = w->nbounds; /* bisect_left(bounds, late) */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (w->bounds[mid] < late) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    if (!PyList_Check(w->counts) || PyList_GET_SIZE(w->counts) <= lo) {
        PyErr_SetString(PyExc_RuntimeError, "lag.counts is shorter than its bounds");
        return report_error(w->record_error);
    }
    PyObject *count = PyNumber_Add(PyList_GET_ITEM(w->counts, lo), s_one);
    if (count == NULL) {
        return report_error(w->record_error);
    }
    PyList_SetItem(w->counts, lo, count); /* steals count, drops the old one */
    if (float_attr_update(w->lag, s_sum_s, late, 0) < 0 ||
        float_attr_update(w->lag, s_late_max_s, late, 1) < 0) {
        return report_error(w->record_error);
    }
    return 0;
}

static PyObject *
TimedWait_vectorcall(TimedWait *w, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Pulse *p = w->pulse;
    double t0, t1;
    if (timed_now(w, &t0) < 0) {
        return NULL;
    }
    if (t0 - p->tick >= w->threshold_s) {
        PyObject *now = PyFloat_FromDouble(t0);
        PyObject *r = now == NULL ? NULL : PyObject_CallOneArg(w->end_block, now);
        Py_XDECREF(now);
        if (r == NULL && report_error(w->record_error) < 0) {
            return NULL;
        }
        Py_XDECREF(r);
    }
    store_tick(p, INFINITY);
    PyObject *result = PyObject_Vectorcall(w->wait, args, nargsf, kwnames);
    /* finally: */
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (result == NULL) {
        PyErr_Fetch(&type, &value, &tb);
    }
    if (timed_now(w, &t1) < 0) {
        goto replaced;
    }
    store_tick(p, t1);
    p->spans++;
    p->idle_s += t1 - t0;
    if (w->has_heap && timed_lateness(w, t1) < 0) {
        goto replaced;
    }
    if (result == NULL) {
        PyErr_Restore(type, value, tb);
    }
    return result;
replaced: /* an error of the bookkeeping itself replaces the wait's outcome, as in Python */
    Py_XDECREF(result);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return NULL;
}

static int
TimedWait_init(TimedWait *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait",    "clock", "pulse",       "reactor",   "has_heap",
                             "lag",     "threshold_s", "end_block", "record_error", NULL};
    PyObject *wait, *clock, *pulse, *reactor, *lag, *end_block, *record_error;
    int has_heap;
    double threshold_s;
    if (w->wait != NULL) {
        /* a call in progress borrows the fields: they never change once set */
        PyErr_SetString(PyExc_TypeError, "TimedWait is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOO!OpOdOO", kwlist, &wait, &clock,
                                     &PulseType, &pulse, &reactor, &has_heap, &lag,
                                     &threshold_s, &end_block, &record_error)) {
        return -1;
    }
    PyObject *counts = PyObject_GetAttrString(lag, "counts");
    if (counts == NULL) {
        return -1;
    }
    PyObject *bounds = PyObject_GetAttrString(lag, "bounds_s");
    if (bounds == NULL) {
        Py_DECREF(counts);
        return -1;
    }
    PyObject *seq = PySequence_Fast(bounds, "lag.bounds_s must be a sequence");
    Py_DECREF(bounds);
    if (seq == NULL) {
        Py_DECREF(counts);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (!PyList_Check(counts) || n > MAX_LAG_BOUNDS || PyList_GET_SIZE(counts) != n + 1) {
        PyErr_SetString(PyExc_ValueError, "lag: a counts list one longer than bounds_s (<= 64)");
        Py_DECREF(seq);
        Py_DECREF(counts);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        w->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (w->bounds[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            Py_DECREF(counts);
            return -1;
        }
    }
    Py_DECREF(seq);
    w->nbounds = n;
    Py_XSETREF(w->counts, counts);
    Py_XSETREF(w->wait, Py_NewRef(wait));
    Py_XSETREF(w->clock, Py_NewRef(clock));
    Py_XSETREF(w->pulse, (Pulse *)Py_NewRef(pulse));
    Py_XSETREF(w->reactor, Py_NewRef(reactor));
    Py_XSETREF(w->lag, Py_NewRef(lag));
    Py_XSETREF(w->end_block, Py_NewRef(end_block));
    Py_XSETREF(w->record_error, Py_NewRef(record_error));
    w->has_heap = has_heap;
    w->threshold_s = threshold_s;
    w->vectorcall = (vectorcallfunc)TimedWait_vectorcall;
    return 0;
}

static PyObject *
TimedWait_call(TimedWait *w, PyObject *args, PyObject *kwds)
{
    if (w->wait == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "TimedWait not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)w, args, kwds);
}

static int
TimedWait_traverse(TimedWait *w, visitproc visit, void *arg)
{
    Py_VISIT(w->wait);
    Py_VISIT(w->clock);
    Py_VISIT(w->reactor);
    Py_VISIT(w->lag);
    Py_VISIT(w->counts);
    Py_VISIT(w->end_block);
    Py_VISIT(w->record_error);
    Py_VISIT(w->pulse);
    return 0;
}

static int
TimedWait_clear(TimedWait *w)
{
    w->vectorcall = NULL;
    Py_CLEAR(w->wait);
    Py_CLEAR(w->clock);
    Py_CLEAR(w->reactor);
    Py_CLEAR(w->lag);
    Py_CLEAR(w->counts);
    Py_CLEAR(w->end_block);
    Py_CLEAR(w->record_error);
    Py_CLEAR(w->pulse);
    return 0;
}

static void
TimedWait_dealloc(TimedWait *w)
{
    PyObject_GC_UnTrack(w);
    TimedWait_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
TimedWait_get_wrapped(TimedWait *w, void *closure)
{
    return Py_NewRef(w->wait != NULL ? w->wait : Py_None);
}

static PyGetSetDef TimedWait_getset[] = {
    {"__wrapped__", (getter)TimedWait_get_wrapped, NULL, "the wait this times", NULL},
    {NULL},
};

static PyTypeObject TimedWaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.TimedWait",
    .tp_basicsize = sizeof(TimedWait),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The loop probe's timed poller wait.",
    .tp_traverse = (traverseproc)TimedWait_traverse,
    .tp_clear = (inquiry)TimedWait_clear,
    .tp_dealloc = (destructor)TimedWait_dealloc,
    .tp_vectorcall_offset = offsetof(TimedWait, vectorcall),
    .tp_call = (ternaryfunc)TimedWait_call,
    .tp_getset = TimedWait_getset,
    .tp_init = (initproc)TimedWait_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------
 * The connection probe's per-request hooks (dashboard/probes/connections.py): twins of its
 * Python wrappers of tcp.Connection._dataReceived ("in": bytes in and when they came) and
 * writeSomeData ("out": bytes written). Measured with both servers sharing a core, the two
 * Python wrappers cost a Klein hello server 1.2% of its throughput (a frame each per
 * request); these are method descriptors like Hook: no frame, no bound method.
 *
 * The record is entries[id(transport)] (a ConnEntry: bytes_in, bytes_out, last_in);
 * bookkeeping errors go to record_error as on the Python path, the original is always
 * called with the same arguments and its result or exception passed through.
 */
enum { IO_IN = 0, IO_OUT = 1 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int kind;
    PyObject *original;
    PyObject *entries; /* dict: id(transport) -> ConnEntry; never changes identity */
    PyObject *clock;
    PyObject *record_error;
    PyObject *dict; /* __name__, __qualname__, __wrapped__... set by the probe */
} IOHook;

static PyObject *s_bytes_in, *s_bytes_out, *s_last_in;

/* The record of `transport` (borrowed), NULL without an error when it has none. */
static PyObject *
io_entry(IOHook *h, PyObject *transport)
{
    PyObject *key = PyLong_FromVoidPtr(transport);
    if (key == NULL) {
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(h->entries, key);
    Py_DECREF(key);
    return entry;
}

/* entry.<name> += add */
static int
io_add(PyObject *entry, PyObject *name, PyObject *add)
{
    PyObject *old = PyObject_GetAttr(entry, name);
    if (old == NULL) {
        return -1;
    }
    PyObject *total = PyNumber_Add(old, add);
    Py_DECREF(old);
    if (total == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttr(entry, name, total);
    Py_DECREF(total);
    return rc;
}

/* _dataReceived(self, data), before the original runs, in the Python wrapper's order:
 * `if data:` entry = entries.get(id(self)); entry.bytes_in += len(data);
 * entry.last_in = clock(). 0, or -1 with an error set. */
static int
io_count_in(IOHook *h, PyObject *self, PyObject *data)
{
    int truth = PyBytes_CheckExact(data) ? PyBytes_GET_SIZE(data) > 0 : PyObject_IsTrue(data);
    if (truth <= 0) {
        return truth;
    }
    PyObject *entry = io_entry(h, self);
    if (entry == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(entry);
    int rc = -1;
    Py_ssize_t n = PyObject_Length(data);
    PyObject *size = n < 0 ? NULL : PyLong_FromSsize_t(n);
    if (size != NULL && io_add(entry, s_bytes_in, size) == 0) {
        PyObject *now = PyObject_CallNoArgs(h->clock);
        rc = now == NULL ? -1 : PyObject_SetAttr(entry, s_last_in, now);
        Py_XDECREF(now);
    }
    Py_XDECREF(size);
    Py_DECREF(entry);
    return rc;
}

/* writeSomeData(self, data) returned `sent`: an int is the count written (a ConnectionLost
 * instance is returned on error): `if sent.__class__ is int and sent > 0`, add it.
 * 0, or -1 with an error set. */
static int
io_count_out(IOHook *h, PyObject *self, PyObject *sent)
{
    if (!PyLong_CheckExact(sent) || rd_long_sign(sent) <= 0) {
        return 0;
    }
    PyObject *entry = io_entry(h, self);
    if (entry == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(entry);
    int rc = io_add(entry, s_bytes_out, sent);
    Py_DECREF(entry);
    return rc;
}

static PyObject *
IOHook_vectorcall(IOHook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    /* Counted when called as Twisted calls them, (self, data) positionally; any other call
     * goes to the original untouched (it reports a wrong call itself). */
    int plain = PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL;
    if (h->kind == IO_IN) {
        if (plain && io_count_in(h, args[0], args[1]) < 0 &&
            report_error(h->record_error) < 0) {
            return NULL;
        }
        return PyObject_Vectorcall(h->original, args, nargsf, kwnames);
    }
    PyObject *sent = PyObject_Vectorcall(h->original, args, nargsf, kwnames);
    if (sent != NULL && plain && io_count_out(h, args[0], sent) < 0 &&
        report_error(h->record_error) < 0) {
        Py_DECREF(sent);
        return NULL;
    }
    return sent;
}

static int
IOHook_traverse(IOHook *h, visitproc visit, void *arg)
{
    Py_VISIT(h->original);
    Py_VISIT(h->entries);
    Py_VISIT(h->clock);
    Py_VISIT(h->record_error);
    Py_VISIT(h->dict);
    return 0;
}

static int
IOHook_clear(IOHook *h)
{
    h->vectorcall = NULL;
    Py_CLEAR(h->original);
    Py_CLEAR(h->entries);
    Py_CLEAR(h->clock);
    Py_CLEAR(h->record_error);
    Py_CLEAR(h->dict);
    return 0;
}

static void
IOHook_dealloc(IOHook *h)
{
    PyObject_GC_UnTrack(h);
    IOHook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *
IOHook_call(IOHook *h, PyObject *args, PyObject *kwds)
{
    if (h->original == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "IOHook not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)h, args, kwds);
}

static int
IOHook_init(IOHook *h, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "original", "entries", "clock", "record_error", NULL};
    const char *kind;
    PyObject *original, *entries, *clock, *record_error;
    if (h->original != NULL) {
        PyErr_SetString(PyExc_TypeError, "IOHook is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$sOO!OO", kwlist, &kind, &original,
                                     &PyDict_Type, &entries, &clock, &record_error)) {
        return -1;
    }
    if (strcmp(kind, "in") == 0) {
        h->kind = IO_IN;
    }
    else if (strcmp(kind, "out") == 0) {
        h->kind = IO_OUT;
    }
    else {
        PyErr_SetString(PyExc_ValueError, "kind must be 'in' or 'out'");
        return -1;
    }
    h->entries = Py_NewRef(entries);
    h->clock = Py_NewRef(clock);
    h->record_error = Py_NewRef(record_error);
    h->original = Py_NewRef(original);
    h->vectorcall = (vectorcallfunc)IOHook_vectorcall;
    return 0;
}

static PyGetSetDef IOHook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject IOHookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.IOHook",
    .tp_basicsize = sizeof(IOHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR |
                Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A tcp.Connection method patched by the connection probe.",
    .tp_traverse = (traverseproc)IOHook_traverse,
    .tp_clear = (inquiry)IOHook_clear,
    .tp_dealloc = (destructor)IOHook_dealloc,
    .tp_vectorcall_offset = offsetof(IOHook, vectorcall),
    .tp_dictoffset = offsetof(IOHook, dict),
    .tp_getset = IOHook_getset,
    .tp_call = (ternaryfunc)IOHook_call,
    .tp_descr_get = Hook_descr_get,
    .tp_init = (initproc)IOHook_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------------------
 * Busy time by handler (dashboard/probes/handlers.py, handler_table.py): the twins of its
 * Python hot path, which cost an epoll loop iteration 1.30x (budget 1.2x) and a Klein hello
 * server 3% of its throughput: two reactor-clock reads (a Python frame each), a Python call
 * and the counters per handler call.
 *
 * HandlerEntry: one handler's counters in C fields; it reads and writes like the Python
 * path's list ([calls, busy_s, interval_max_s, max_s, counts, name, own]), so the table's
 * reading code serves both. HandlerTimer: times each call and counts it into its entry.
 * Durations are read with CLOCK_MONOTONIC (or, when a clock is given, by calling it: tests
 * drive one); a timed call's entry is found by its code object's address (a LoopingCall's:
 * its function's, tagged) in a bounded table, an I/O event's in the Python table's dicts by
 * the protocol's (or descriptor's) class; a miss is named by the Python table, which also
 * says whether the answer may be kept. Accounting errors go to record_error; the handler's
 * own result or exception is passed through untouched.
 */
#define MAX_HANDLER_BUCKETS 32
#define HANDLER_CACHE_MAX 4096 /* cached codes, as the Python path's _CACHE_MAX */

typedef struct {
    PyObject_HEAD
    long long calls;
    double busy_s, imax_s, max_s;
    PyObject *name, *own;
    Py_ssize_t nbuckets;
    long long counts[MAX_HANDLER_BUCKETS];
} HandlerEntry;

static PyTypeObject HandlerEntryType;

static PyObject *
HandlerEntry_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *name, *own;
    Py_ssize_t nbuckets;
    static char *kwlist[] = {"name", "own", "buckets", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UOn:HandlerEntry", kwlist, &name, &own,
                                     &nbuckets)) {
        return NULL;
    }
    if (nbuckets < 1 || nbuckets > MAX_HANDLER_BUCKETS) {
        PyErr_SetString(PyExc_ValueError, "buckets must be 1..32");
        return NULL;
    }
    HandlerEntry *e = (HandlerEntry *)type->tp_alloc(type, 0);
    if (e == NULL) {
        return NULL;
    }
    e->name = Py_NewRef(name);
    e->own = Py_NewRef(own);
    e->nbuckets = nbuckets;
    return (PyObject *)e;
}

static void
HandlerEntry_dealloc(HandlerEntry *e)
{
    Py_CLEAR(e->name);
    Py_CLEAR(e->own);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static Py_ssize_t
HandlerEntry_length(PyObject *self)
{
    return 7;
}

static PyObject *
HandlerEntry_item(HandlerEntry *e, Py_ssize_t i)
{
    switch (i) {
    case 0:
        return PyLong_FromLongLong(e->calls);
    case 1:
        return PyFloat_FromDouble(e->busy_s);
    case 2:
        return PyFloat_FromDouble(e->imax_s);
    case 3:
        return PyFloat_FromDouble(e->max_s);
    case 4: {
        PyObject *counts = PyList_New(e->nbuckets);
        for (Py_ssize_t k = 0; counts != NULL && k < e->nbuckets; k++) {
            PyObject *n = PyLong_FromLongLong(e->counts[k]);
            if (n == NULL) {
                Py_CLEAR(counts);
                break;
            }
            PyList_SET_ITEM(counts, k, n);
        }
        return counts;
    }
    case 5:
        return Py_NewRef(e->name);
    case 6:
        return Py_NewRef(e->own);
    }
    PyErr_SetString(PyExc_IndexError, "HandlerEntry index out of range");
    return NULL;
}

static int
HandlerEntry_ass_item(HandlerEntry *e, Py_ssize_t i, PyObject *value)
{
    if (value == NULL || i < 0 || i > 3) {
        PyErr_SetString(PyExc_TypeError, "only calls, busy_s and the maxima can be set");
        return -1;
    }
    if (i == 0) {
        long long n = PyLong_AsLongLong(value);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        e->calls = n;
        return 0;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *(i == 1 ? &e->busy_s : i == 2 ? &e->imax_s : &e->max_s) = v;
    return 0;
}

static PySequenceMethods HandlerEntry_as_sequence = {
    .sq_length = HandlerEntry_length,
    .sq_item = (ssizeargfunc)HandlerEntry_item,
    .sq_ass_item = (ssizeobjargproc)HandlerEntry_ass_item,
};

static PyTypeObject HandlerEntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.HandlerEntry",
    .tp_basicsize = sizeof(HandlerEntry),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One handler's counters: [calls, busy_s, interval_max_s, max_s, counts, name, "
              "own].",
    .tp_dealloc = (destructor)HandlerEntry_dealloc,
    .tp_as_sequence = &HandlerEntry_as_sequence,
    .tp_new = HandlerEntry_new,
};

typedef struct {
    uintptr_t key; /* a code object's address, | 1 for a LoopingCall's function */
    PyObject *code;
    PyObject *entry;
} CodeSlot;

/* One I/O event begun by io_start: its descriptor, the protocol it carried (NULL: none),
 * and when it began (timed: 0 when the clock failed). */
#define IO_STACK_MAX 8
typedef struct {
    PyObject *selectable, *protocol;
    double t0;
    int timed;
} IOFrame;

enum { FLAVOUR_POLL = 0, FLAVOUR_SELECT = 1, FLAVOUR_ASYNCIO = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *clock; /* NULL: CLOCK_MONOTONIC */
    PyObject *name_call;
    PyObject *io_caches; /* tuple of 3 dicts: class -> HandlerEntry */
    PyObject *name_io;
    PyObject *record_error;
    PyObject *looping_call;
    PyObject *channel_proxy;
    double bounds[MAX_HANDLER_BUCKETS];
    Py_ssize_t nbounds;
    CodeSlot *slots;
    size_t nslots, used;
    /* io_start / io_done (the recompiled dispatch): the flavour that tells the event's
     * kind, and the events begun and not yet done (a reactor run again from inside a
     * handler nests them; deeper than IO_STACK_MAX they are not timed) */
    int io_flavour;
    long io_poll_in, io_poll_disconnected;
    IOFrame io_stack[IO_STACK_MAX];
    int io_depth;
} HandlerTimer;

static PyObject *s_protocol, *s_channel, *s_f, *s_doRead;

static inline double
mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The clock now: 0, or -1 with an error set (a given clock that failed). */
static inline int
handler_now(HandlerTimer *t, double *out)
{
    if (t->clock == NULL) {
        *out = mono_now();
        return 0;
    }
    PyObject *r = PyObject_CallNoArgs(t->clock);
    if (r == NULL) {
        return -1;
    }
    double v = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *out = v;
    return 0;
}

/* One call of `d` seconds into `entry`: 0, or -1 with an error set. */
static int
handler_count(HandlerTimer *t, PyObject *entry, double d)
{
    if (!Py_IS_TYPE(entry, &HandlerEntryType)) {
        PyErr_Format(PyExc_TypeError, "a handler entry was expected, not %.100s",
                     Py_TYPE(entry)->tp_name);
        return -1;
    }
    HandlerEntry *e = (HandlerEntry *)entry;
    e->calls++;
    e->busy_s += d;
    if (d > e->imax_s) {
        e->imax_s = d;
    }
    if (t->nbounds > 0 && d > t->bounds[0]) {
        Py_ssize_t lo = 0, hi = t->nbounds; /* bisect_left(bounds, d); the last is +inf */
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (t->bounds[mid] < d) {
                lo = mid + 1;
            }
            else {
                hi = mid;
            }
        }
        if (lo >= e->nbuckets) {
            lo = e->nbuckets - 1;
        }
        e->counts[lo]++;
    }
    return 0;
}

static void
timer_clear_slots(HandlerTimer *t)
{
    if (t->slots == NULL) {
        return;
    }
    for (size_t i = 0; i < t->nslots; i++) {
        Py_CLEAR(t->slots[i].code);
        Py_CLEAR(t->slots[i].entry);
        t->slots[i].key = 0;
    }
    t->used = 0;
}

static inline size_t
slot_index(HandlerTimer *t, uintptr_t key)
{
    return ptr_hash((const void *)key, 0) & (t->nslots - 1);
}

/* The cached entry of `key` (borrowed), or NULL. */
static inline PyObject *
timer_lookup(HandlerTimer *t, uintptr_t key)
{
    for (size_t i = slot_index(t, key);; i = (i + 1) & (t->nslots - 1)) {
        CodeSlot *s = &t->slots[i];
        if (s->key == key) {
            return s->entry;
        }
        if (s->key == 0) {
            return NULL;
        }
    }
}

static void
timer_store(HandlerTimer *t, uintptr_t key, PyObject *code, PyObject *entry)
{
    if (t->used >= HANDLER_CACHE_MAX) {
        timer_clear_slots(t);
    }
    size_t i = slot_index(t, key);
    while (t->slots[i].key != 0 && t->slots[i].key != key) {
        i = (i + 1) & (t->nslots - 1);
    }
    CodeSlot *s = &t->slots[i];
    if (s->key == 0) {
        t->used++;
    }
    s->key = key;
    Py_XSETREF(s->code, Py_NewRef(code));
    Py_XSETREF(s->entry, Py_NewRef(entry));
}

/* The code object a function or bound method runs (borrowed), or NULL. */
static inline PyObject *
code_of(PyObject *func)
{
    if (Py_IS_TYPE(func, &PyMethod_Type)) {
        func = PyMethod_GET_FUNCTION(func);
    }
    return PyFunction_Check(func) ? PyFunction_GET_CODE(func) : NULL;
}

/* The entry of a timed call's `f` (a new reference), or NULL with an error set. */
static PyObject *
timer_call_entry(HandlerTimer *t, PyObject *f)
{
    PyObject *code;
    uintptr_t tag = 0;
    if (t->looping_call != NULL && PyObject_TypeCheck(f, (PyTypeObject *)t->looping_call)) {
        PyObject *inner = PyObject_GetAttr(f, s_f);
        if (inner == NULL) {
            return NULL;
        }
        code = code_of(inner);
        Py_DECREF(inner); /* the LoopingCall holds it; the slot holds the code */
        tag = 1;
    }
    else {
        code = code_of(f);
    }
    uintptr_t key = code == NULL ? 0 : ((uintptr_t)code | tag);
    if (key != 0) {
        PyObject *found = timer_lookup(t, key);
        if (found != NULL) {
            return Py_NewRef(found);
        }
    }
    PyObject *named = PyObject_CallOneArg(t->name_call, f);
    if (named == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(named) || PyTuple_GET_SIZE(named) != 2) {
        Py_DECREF(named);
        PyErr_SetString(PyExc_TypeError, "name_call must return (entry, cacheable)");
        return NULL;
    }
    PyObject *entry = Py_NewRef(PyTuple_GET_ITEM(named, 0));
    int cacheable = PyObject_IsTrue(PyTuple_GET_ITEM(named, 1));
    Py_DECREF(named);
    if (cacheable < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    if (cacheable && key != 0 && Py_IS_TYPE(entry, &HandlerEntryType)) {
        timer_store(t, key, code, entry);
    }
    return entry;
}

/* call(f, args, kwargs): f(*args, **kwargs), timed and counted as f's. */
static PyObject *
HandlerTimer_call(HandlerTimer *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "call(f, args, kwargs) takes 3 arguments");
        return NULL;
    }
    PyObject *f = args[0], *a = args[1], *kw = args[2];
    PyObject *tuple = NULL, *dict = NULL;
    if (!PyTuple_CheckExact(a)) {
        tuple = PySequence_Tuple(a);
        if (tuple == NULL) {
            return NULL;
        }
        a = tuple;
    }
    if (kw == Py_None) {
        kw = NULL;
    }
    else if (!PyDict_CheckExact(kw)) {
        dict = PyDict_New();
        if (dict == NULL || PyDict_Merge(dict, kw, 1) < 0) {
            Py_XDECREF(dict);
            Py_XDECREF(tuple);
            return NULL;
        }
        kw = dict;
    }
    double t0 = 0.0, t1;
    int timed = handler_now(t, &t0) == 0;
    if (!timed && report_error(t->record_error) < 0) {
        Py_XDECREF(tuple);
        Py_XDECREF(dict);
        return NULL;
    }
    PyObject *result = PyObject_Call(f, a, kw);
    Py_XDECREF(tuple);
    Py_XDECREF(dict);
    if (!timed) {
        return result;
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (result == NULL) {
        PyErr_Fetch(&type, &value, &tb);
    }
    int rc = handler_now(t, &t1);
    if (rc == 0) {
        PyObject *entry = timer_call_entry(t, f);
        rc = entry == NULL ? -1 : handler_count(t, entry, t1 - t0);
        Py_XDECREF(entry);
    }
    if (rc < 0 && report_error(t->record_error) < 0) {
        Py_XDECREF(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    if (result == NULL) {
        PyErr_Restore(type, value, tb);
    }
    return result;
}

static PyObject *
HandlerTimer_clear_cache(HandlerTimer *t, PyObject *Py_UNUSED(ignored))
{
    timer_clear_slots(t);
    Py_RETURN_NONE;
}

static int
HandlerTimer_traverse(HandlerTimer *t, visitproc visit, void *arg)
{
    Py_VISIT(t->clock);
    Py_VISIT(t->name_call);
    Py_VISIT(t->io_caches);
    Py_VISIT(t->name_io);
    Py_VISIT(t->record_error);
    Py_VISIT(t->looping_call);
    Py_VISIT(t->channel_proxy);
    for (size_t i = 0; t->slots != NULL && i < t->nslots; i++) {
        Py_VISIT(t->slots[i].code);
        Py_VISIT(t->slots[i].entry);
    }
    for (int i = 0; i < t->io_depth && i < IO_STACK_MAX; i++) {
        Py_VISIT(t->io_stack[i].selectable);
        Py_VISIT(t->io_stack[i].protocol);
    }
    return 0;
}

static int
HandlerTimer_clear(HandlerTimer *t)
{
    Py_CLEAR(t->clock);
    Py_CLEAR(t->name_call);
    Py_CLEAR(t->io_caches);
    Py_CLEAR(t->name_io);
    Py_CLEAR(t->record_error);
    Py_CLEAR(t->looping_call);
    Py_CLEAR(t->channel_proxy);
    timer_clear_slots(t);
    for (int i = 0; i < IO_STACK_MAX; i++) {
        Py_CLEAR(t->io_stack[i].selectable);
        Py_CLEAR(t->io_stack[i].protocol);
    }
    t->io_depth = 0;
    return 0;
}

static void
HandlerTimer_dealloc(HandlerTimer *t)
{
    PyObject_GC_UnTrack(t);
    HandlerTimer_clear(t);
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int
HandlerTimer_init(HandlerTimer *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"clock",        "name_call",    "io_caches",     "name_io",
                             "record_error", "looping_call", "channel_proxy", "bounds", NULL};
    PyObject *clock, *name_call, *io_caches, *name_io, *record_error, *looping_call,
        *channel_proxy, *bounds;
    if (t->name_call != NULL) {
        PyErr_SetString(PyExc_TypeError, "HandlerTimer is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOO!OOOOO", kwlist, &clock, &name_call,
                                     &PyTuple_Type, &io_caches, &name_io, &record_error,
                                     &looping_call, &channel_proxy, &bounds)) {
        return -1;
    }
    if (PyTuple_GET_SIZE(io_caches) != 3) {
        PyErr_SetString(PyExc_ValueError, "io_caches: three dicts (read, write, lost)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 3; i++) {
        if (!PyDict_Check(PyTuple_GET_ITEM(io_caches, i))) {
            PyErr_SetString(PyExc_TypeError, "io_caches: three dicts (read, write, lost)");
            return -1;
        }
    }
    if (!PyType_Check(looping_call) || !PyType_Check(channel_proxy)) {
        PyErr_SetString(PyExc_TypeError, "looping_call and channel_proxy must be classes");
        return -1;
    }
    PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_HANDLER_BUCKETS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "at most 32 bounds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        t->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (t->bounds[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    t->nbounds = n;
    t->nslots = 2 * HANDLER_CACHE_MAX; /* a power of two, at most half full */
    t->slots = PyMem_Calloc(t->nslots, sizeof(CodeSlot));
    if (t->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    t->name_call = Py_NewRef(name_call);
    t->io_caches = Py_NewRef(io_caches);
    t->name_io = Py_NewRef(name_io);
    t->record_error = Py_NewRef(record_error);
    t->looping_call = Py_NewRef(looping_call);
    t->channel_proxy = Py_NewRef(channel_proxy);
    return 0;
}

static PyObject *HandlerTimer_io_hook(HandlerTimer *t, PyObject *args, PyObject *kwds);
static PyObject *HandlerTimer_io_flavour(HandlerTimer *t, PyObject *args, PyObject *kwds);
static PyObject *HandlerTimer_io_start(HandlerTimer *t, PyObject *selectable);
static PyObject *HandlerTimer_io_done(HandlerTimer *t, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef HandlerTimer_methods[] = {
    {"call", (PyCFunction)(void (*)(void))HandlerTimer_call, METH_FASTCALL,
     "call(f, args, kwargs): f(*args, **kwargs), timed and counted as f's."},
    {"clear_cache", (PyCFunction)HandlerTimer_clear_cache, METH_NOARGS,
     "Forget the cached entries of timed calls."},
    {"io_hook", (PyCFunction)(void (*)(void))HandlerTimer_io_hook,
     METH_VARARGS | METH_KEYWORDS,
     "io_hook(flavour, real, poll_in=0, poll_disconnected=0): a timed twin of real."},
    {"io_flavour", (PyCFunction)(void (*)(void))HandlerTimer_io_flavour,
     METH_VARARGS | METH_KEYWORDS,
     "io_flavour(flavour, poll_in=0, poll_disconnected=0): how io_done tells an event's kind."},
    {"io_start", (PyCFunction)HandlerTimer_io_start, METH_O,
     "io_start(selectable): an I/O event begins (the recompiled dispatch's first statement)."},
    {"io_done", (PyCFunction)(void (*)(void))HandlerTimer_io_done, METH_FASTCALL,
     "io_done(kind_arg, why): the event begun last is over; counted as its handler's."},
    {NULL},
};

static PyTypeObject HandlerTimerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.HandlerTimer",
    .tp_basicsize = sizeof(HandlerTimer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Busy time by handler: times the reactor's calls into HandlerEntry counters.",
    .tp_traverse = (traverseproc)HandlerTimer_traverse,
    .tp_clear = (inquiry)HandlerTimer_clear,
    .tp_dealloc = (destructor)HandlerTimer_dealloc,
    .tp_methods = HandlerTimer_methods,
    .tp_init = (initproc)HandlerTimer_init,
    .tp_new = PyType_GenericNew,
};

/* The I/O hook: the handler_io wrapper's twin, one flavour per reactor. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    HandlerTimer *timer;
    PyObject *real;
    int flavour;
    long poll_in, poll_disconnected;
    PyObject *dict;
} TimedIO;

/* The event's kind (0 read, 1 write, 2 lost) from the argument of the dispatch that tells
 * it (poll: the event bits; select: the method's name; asyncio: read), or -1. */
static int
event_kind(int flavour, long poll_in, long poll_disconnected, PyObject *arg)
{
    if (flavour == FLAVOUR_POLL) {
        long event = PyLong_AsLong(arg);
        if (event == -1 && PyErr_Occurred()) {
            return -1;
        }
        return (event & poll_in) ? 0 : ((event & poll_disconnected) ? 2 : 1);
    }
    if (flavour == FLAVOUR_SELECT) {
        int equal = arg == s_doRead ? 1 : PyObject_RichCompareBool(arg, s_doRead, Py_EQ);
        return equal < 0 ? -1 : (equal ? 0 : 1);
    }
    int read = PyObject_IsTrue(arg);
    return read < 0 ? -1 : (read ? 0 : 1);
}

/* The event's kind from the dispatch's arguments, or -1. */
static int
io_kind(TimedIO *h, PyObject *const *args)
{
    return event_kind(h->flavour, h->poll_in, h->poll_disconnected,
                      args[h->flavour == FLAVOUR_POLL ? 2 : 1]);
}

static int io_count(HandlerTimer *t, PyObject *selectable, PyObject *protocol, int kind,
                    double d);

/* After the dispatch: count `d` seconds into the event's entry. 0, or -1 with an error set. */
static int
io_account(TimedIO *h, PyObject *const *args, PyObject *protocol, double d)
{
    HandlerTimer *t = h->timer;
    PyObject *selectable = args[0];
    int kind = io_kind(h, args);
    if (kind < 0) {
        return -1;
    }
    if (protocol != NULL && kind == 0) {
        PyObject *now = PyObject_GetAttr(selectable, s_protocol);
        if (now == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return -1;
            }
            PyErr_Clear();
            kind = 2;
        }
        else {
            if (now == Py_None) {
                kind = 2;
            }
            Py_DECREF(now);
        }
    }
    return io_count(t, selectable, protocol, kind, d);
}

/* `d` seconds of an event of `kind` into its entry: found in the table's dict of that kind
 * by the protocol's (or descriptor's) class, else named by the table. 0, or -1 with an
 * error set. */
static int
io_count(HandlerTimer *t, PyObject *selectable, PyObject *protocol, int kind, double d)
{
    PyObject *key = (PyObject *)Py_TYPE(protocol != NULL ? protocol : selectable);
    PyObject *entry = PyDict_GetItemWithError(PyTuple_GET_ITEM(t->io_caches, kind), key);
    if (entry != NULL) {
        return handler_count(t, entry, d);
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *kind_obj = PyLong_FromLong(kind);
    if (kind_obj == NULL) {
        return -1;
    }
    PyObject *call_args[3] = {selectable, protocol != NULL ? protocol : Py_None, kind_obj};
    entry = PyObject_Vectorcall(t->name_io, call_args, 3, NULL);
    Py_DECREF(kind_obj);
    if (entry == NULL) {
        return -1;
    }
    int rc = handler_count(t, entry, d);
    Py_DECREF(entry);
    return rc;
}

/* The protocol `selectable` carries (a new reference; Twisted Web's channel proxy by its
 * channel), NULL without an error when none can be read; NULL with an error set only for a
 * BaseException that is not an Exception. */
static PyObject *
io_protocol(HandlerTimer *t, PyObject *selectable)
{
    PyObject *protocol = PyObject_GetAttr(selectable, s_protocol);
    if (protocol != NULL && (PyObject *)Py_TYPE(protocol) == t->channel_proxy) {
        Py_SETREF(protocol, PyObject_GetAttr(protocol, s_channel));
    }
    if (protocol == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
        return NULL;
    }
    if (protocol == Py_None) {
        Py_DECREF(protocol);
        return NULL;
    }
    return protocol;
}

static PyObject *
TimedIO_vectorcall(TimedIO *h, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t expected = h->flavour == FLAVOUR_POLL ? 3 : 2;
    if (nargs != expected || kwnames != NULL) {
        /* not as the reactor calls it: the reactor's own method reports a wrong call */
        return PyObject_Vectorcall(h->real, args, nargsf, kwnames);
    }
    HandlerTimer *t = h->timer;
    PyObject *protocol = io_protocol(t, args[0]);
    if (protocol == NULL && PyErr_Occurred()) {
        return NULL;
    }
    double t0 = 0.0, t1;
    int timed = handler_now(t, &t0) == 0;
    if (!timed && report_error(t->record_error) < 0) {
        Py_XDECREF(protocol);
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(h->real, args, nargsf, kwnames);
    if (!timed) {
        Py_XDECREF(protocol);
        return result;
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (result == NULL) {
        PyErr_Fetch(&type, &value, &tb);
    }
    int rc = handler_now(t, &t1);
    if (rc == 0) {
        rc = io_account(h, args, protocol, t1 - t0);
    }
    Py_XDECREF(protocol);
    if (rc < 0 && report_error(t->record_error) < 0) {
        Py_XDECREF(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    if (result == NULL) {
        PyErr_Restore(type, value, tb);
    }
    return result;
}

static PyObject *
TimedIO_call(TimedIO *h, PyObject *args, PyObject *kwds)
{
    return PyVectorcall_Call((PyObject *)h, args, kwds);
}

static int
TimedIO_traverse(TimedIO *h, visitproc visit, void *arg)
{
    Py_VISIT(h->timer);
    Py_VISIT(h->real);
    Py_VISIT(h->dict);
    return 0;
}

static int
TimedIO_clear(TimedIO *h)
{
    Py_CLEAR(h->timer);
    Py_CLEAR(h->real);
    Py_CLEAR(h->dict);
    return 0;
}

static void
TimedIO_dealloc(TimedIO *h)
{
    PyObject_GC_UnTrack(h);
    TimedIO_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *
TimedIO_get_wrapped(TimedIO *h, void *closure)
{
    return Py_NewRef(h->real != NULL ? h->real : Py_None);
}

static PyGetSetDef TimedIO_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"__wrapped__", (getter)TimedIO_get_wrapped, NULL, "the dispatch this times", NULL},
    {NULL},
};

static PyTypeObject TimedIOType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dashboard._accel.TimedIO",
    .tp_basicsize = sizeof(TimedIO),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A reactor's I/O dispatch, timed by busy time by handler.",
    .tp_traverse = (traverseproc)TimedIO_traverse,
    .tp_clear = (inquiry)TimedIO_clear,
    .tp_dealloc = (destructor)TimedIO_dealloc,
    .tp_vectorcall_offset = offsetof(TimedIO, vectorcall),
    .tp_dictoffset = offsetof(TimedIO, dict),
    .tp_getset = TimedIO_getset,
    .tp_call = (ternaryfunc)TimedIO_call,
};

/* FLAVOUR_* of a flavour's name, or -1 with an error set. */
static int
flavour_of(const char *flavour)
{
    if (strcmp(flavour, "poll") == 0) {
        return FLAVOUR_POLL;
    }
    if (strcmp(flavour, "select") == 0) {
        return FLAVOUR_SELECT;
    }
    if (strcmp(flavour, "asyncio") == 0) {
        return FLAVOUR_ASYNCIO;
    }
    PyErr_SetString(PyExc_ValueError, "flavour must be 'poll', 'select' or 'asyncio'");
    return -1;
}

static PyObject *
HandlerTimer_io_hook(HandlerTimer *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"flavour", "real", "poll_in", "poll_disconnected", NULL};
    const char *flavour;
    PyObject *real;
    long poll_in = 0, poll_disconnected = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO|$ll:io_hook", kwlist, &flavour, &real,
                                     &poll_in, &poll_disconnected)) {
        return NULL;
    }
    int which = flavour_of(flavour);
    if (which < 0) {
        return NULL;
    }
    TimedIO *h = PyObject_GC_New(TimedIO, &TimedIOType);
    if (h == NULL) {
        return NULL;
    }
    h->timer = (HandlerTimer *)Py_NewRef(t);
    h->real = Py_NewRef(real);
    h->flavour = which;
    h->poll_in = poll_in;
    h->poll_disconnected = poll_disconnected;
    h->dict = NULL;
    h->vectorcall = (vectorcallfunc)TimedIO_vectorcall;
    PyObject_GC_Track(h);
    return (PyObject *)h;
}

/* The recompiled dispatch (dashboard/probes/handler_source.py, with_timed_body): Twisted's
 * own method, its body between io_start(selectable) and, in a `finally`, io_done(arg, why).
 * No wrapper and no second call into Python per event: the protocol is read once, before
 * (a connection that ends drops it), and an event after which the reactor disconnects the
 * descriptor (`why`, the dispatch's own local, is true) is its protocol's connectionLost. */
static PyObject *
HandlerTimer_io_flavour(HandlerTimer *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"flavour", "poll_in", "poll_disconnected", NULL};
    const char *flavour;
    long poll_in = 0, poll_disconnected = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|$ll:io_flavour", kwlist, &flavour,
                                     &poll_in, &poll_disconnected)) {
        return NULL;
    }
    int which = flavour_of(flavour);
    if (which < 0) {
        return NULL;
    }
    t->io_flavour = which;
    t->io_poll_in = poll_in;
    t->io_poll_disconnected = poll_disconnected;
    Py_RETURN_NONE;
}

static PyObject *
HandlerTimer_io_start(HandlerTimer *t, PyObject *selectable)
{
    int depth = t->io_depth++;
    if (depth >= IO_STACK_MAX) {
        Py_RETURN_NONE; /* nested too deep: io_done only counts it down */
    }
    IOFrame *f = &t->io_stack[depth];
    PyObject *protocol = io_protocol(t, selectable);
    if (protocol == NULL && PyErr_Occurred()) {
        t->io_depth--; /* a KeyboardInterrupt or the like: the dispatch does not begin */
        return NULL;
    }
    f->selectable = Py_NewRef(selectable);
    f->protocol = protocol;
    f->timed = handler_now(t, &f->t0) == 0;
    if (!f->timed && report_error(t->record_error) < 0) {
        Py_CLEAR(f->selectable);
        Py_CLEAR(f->protocol);
        t->io_depth--;
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
HandlerTimer_io_done(HandlerTimer *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (t->io_depth <= 0) {
        Py_RETURN_NONE; /* no io_start to match (state cleared meanwhile) */
    }
    int depth = --t->io_depth;
    if (depth >= IO_STACK_MAX) {
        Py_RETURN_NONE;
    }
    IOFrame *f = &t->io_stack[depth];
    PyObject *selectable = f->selectable, *protocol = f->protocol;
    f->selectable = f->protocol = NULL;
    int rc = 0;
    if (selectable != NULL && f->timed) {
        double t1;
        rc = handler_now(t, &t1);
        int kind = -1;
        if (rc == 0 && nargs != 2) {
            PyErr_SetString(PyExc_TypeError, "io_done(kind_arg, why) takes 2 arguments");
            rc = -1;
        }
        if (rc == 0) {
            kind = event_kind(t->io_flavour, t->io_poll_in, t->io_poll_disconnected, args[0]);
            rc = kind < 0 ? -1 : 0;
        }
        if (rc == 0 && protocol != NULL && kind != 2 && args[1] != Py_None) {
            int lost = PyObject_IsTrue(args[1]);
            rc = lost < 0 ? -1 : 0;
            kind = lost > 0 ? 2 : kind;
        }
        if (rc == 0) {
            rc = io_count(t, selectable, protocol, kind, t1 - f->t0);
        }
    }
    Py_XDECREF(selectable);
    Py_XDECREF(protocol);
    if (rc < 0 && report_error(t->record_error) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------
 * Module
 */
static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dashboard._accel",
    .m_doc = "Optional accelerator for the probes' hot paths.",
    .m_size = -1,
    .m_methods = accel_methods,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    if (!(s_callbacks = PyUnicode_InternFromString("_callbacks")) ||
        !(s_canceller_attr = PyUnicode_InternFromString("_canceller")) ||
        !(s_debug = PyUnicode_InternFromString("debug")) ||
        !(s_rd_ref = PyUnicode_InternFromString("_rd_ref")) ||
        !(s_called = PyUnicode_InternFromString("called")) ||
        !(s_gi_code = PyUnicode_InternFromString("gi_code")) ||
        !(s_cr_code = PyUnicode_InternFromString("cr_code")) ||
        !(s_pending_timed_calls = PyUnicode_InternFromString("_pendingTimedCalls")) ||
        !(s_time = PyUnicode_InternFromString("time")) ||
        !(s_sum_s = PyUnicode_InternFromString("sum_s")) ||
        !(s_late_max_s = PyUnicode_InternFromString("late_max_s")) ||
        !(s_one = PyLong_FromLong(1)) ||
        !(s_bytes_in = PyUnicode_InternFromString("bytes_in")) ||
        !(s_bytes_out = PyUnicode_InternFromString("bytes_out")) ||
        !(s_last_in = PyUnicode_InternFromString("last_in")) ||
        !(s_protocol = PyUnicode_InternFromString("protocol")) ||
        !(s_channel = PyUnicode_InternFromString("_channel")) ||
        !(s_f = PyUnicode_InternFromString("f")) ||
        !(s_doRead = PyUnicode_InternFromString("doRead"))) {
        return NULL;
    }
    if (PyType_Ready(&SiteCountsType) < 0 || PyType_Ready(&TrackerType) < 0 ||
        PyType_Ready(&HookType) < 0 || PyType_Ready(&PulseType) < 0 ||
        PyType_Ready(&TimedWaitType) < 0 || PyType_Ready(&IOHookType) < 0 ||
        PyType_Ready(&HandlerEntryType) < 0 || PyType_Ready(&HandlerTimerType) < 0 ||
        PyType_Ready(&TimedIOType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", ACCEL_ABI) < 0 ||
        PyModule_AddObjectRef(m, "SiteCounts", (PyObject *)&SiteCountsType) < 0 ||
        PyModule_AddObjectRef(m, "Tracker", (PyObject *)&TrackerType) < 0 ||
        PyModule_AddObjectRef(m, "Hook", (PyObject *)&HookType) < 0 ||
        PyModule_AddObjectRef(m, "Pulse", (PyObject *)&PulseType) < 0 ||
        PyModule_AddObjectRef(m, "TimedWait", (PyObject *)&TimedWaitType) < 0 ||
        PyModule_AddObjectRef(m, "IOHook", (PyObject *)&IOHookType) < 0 ||
        PyModule_AddObjectRef(m, "HandlerEntry", (PyObject *)&HandlerEntryType) < 0 ||
        PyModule_AddObjectRef(m, "HandlerTimer", (PyObject *)&HandlerTimerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
