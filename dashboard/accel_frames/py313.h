/* CPython 3.13: see frames.h. The cframe is gone: the thread state points at its newest frame
 * itself; a frame's code is f_executable (a code object on every complete frame; the C
 * stack's entry frames, which hold None, are incomplete) and its position instr_ptr; a
 * managed dict is a plain pointer again, NULL until the dict is made (the values may stay
 * inline after that, but the instance has a dict: what the tests ask). */
#include "internal/pycore_frame.h"
#include "internal/pycore_object.h"

#define RD_FRAMES_VERSION "3.13"

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
    return f->localsplus[0];
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
