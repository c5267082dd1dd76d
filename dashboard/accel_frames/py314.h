/* CPython 3.14: see frames.h. Written from CPython's 3.14 headers (pycore_interpframe.h,
 * pycore_interpframe_structs.h, pycore_stackref.h, pycore_object.h), NOT run: hatch_build.py
 * builds it only when asked to (REACTOR_DASHBOARD_ACCEL_UNTESTED=1). As 3.13, except that the
 * frame helpers moved to pycore_interpframe.h and a frame's code and locals are stack
 * references (_PyStackRef), read through PyStackRef_AsPyObjectBorrow; the interpreter's own
 * entry frames (owner FRAME_OWNED_BY_INTERPRETER or FRAME_OWNED_BY_CSTACK) are incomplete. */
#if defined(__has_include)
#if __has_include("internal/pycore_interpframe.h")
#include "internal/pycore_interpframe.h" /* 3.14's frame helpers, out of pycore_frame.h */
#else
#include "internal/pycore_frame.h"
#endif
#else
#include "internal/pycore_interpframe.h"
#endif
#include "internal/pycore_object.h"

#define RD_FRAMES_VERSION "3.14"

typedef _PyInterpreterFrame rd_frame;

static inline rd_frame *
rd_current_frame(PyThreadState *ts)
{
    return ts->current_frame;
}

static inline int
rd_frame_incomplete(rd_frame *f)
{
    return _PyFrame_IsIncomplete(f);
}

static inline rd_frame *
rd_frame_previous(rd_frame *f)
{
    return f->previous;
}

static inline PyCodeObject *
rd_frame_code(rd_frame *f)
{
    return _PyFrame_GetCode(f);
}

static inline int
rd_frame_lasti(rd_frame *f)
{
    return _PyInterpreterFrame_LASTI(f);
}

static inline PyObject *
rd_frame_local0(rd_frame *f)
{
    if (PyStackRef_IsNull(f->localsplus[0])) {
        return NULL;
    }
    return PyStackRef_AsPyObjectBorrow(f->localsplus[0]);
}

static inline int
rd_dict_materialized(PyObject *obj)
{
    return _PyObject_GetManagedDict(obj) != NULL;
}

static inline int
rd_long_sign(PyObject *v)
{
    return _PyLong_Sign(v);
}
