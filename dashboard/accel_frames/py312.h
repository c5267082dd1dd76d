/* CPython 3.12: see frames.h. Frames as in 3.11 (cframe->current_frame, f_code, prev_instr);
 * an instance with a managed dict holds either its inline values or a dict in one tagged
 * word (PyDictOrValues). */
#include "internal/pycore_frame.h"
#include "internal/pycore_object.h"

#define RD_FRAMES_VERSION "3.12"

typedef _PyInterpreterFrame rd_frame;

static inline rd_frame *
rd_current_frame(PyThreadState *ts)
{
    return ts->cframe->current_frame;
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
    return f->f_code;
}

static inline int
rd_frame_lasti(rd_frame *f)
{
    return _PyInterpreterFrame_LASTI(f);
}

static inline PyObject *
rd_frame_local0(rd_frame *f)
{
    return f->localsplus[0];
}

static inline int
rd_dict_materialized(PyObject *obj)
{
    return !_PyDictOrValues_IsValues(*_PyObject_DictOrValuesPointer(obj));
}

static inline int
rd_long_sign(PyObject *v)
{
    return _PyLong_Sign(v);
}
