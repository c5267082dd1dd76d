/* CPython 3.11: see frames.h. The thread's frames hang off its cframe; a frame holds its code
 * object (f_code) and the last instruction started (prev_instr); an instance with a managed
 * dict keeps a dict pointer (NULL while its values are inline). */
#include "internal/pycore_frame.h"
#include "internal/pycore_object.h"

#define RD_FRAMES_VERSION "3.11"

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
    return *_PyObject_ManagedDictPointer(obj) != NULL;
}

static inline int
rd_long_sign(PyObject *v)
{
    return _PyLong_Sign(v);
}
