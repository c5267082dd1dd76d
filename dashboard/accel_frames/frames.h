/* What dashboard/_accel.c needs from CPython's internals, one header per CPython version.
 *
 * _accel.c reads the interpreter's own frame stack (the Deferred probe's creation sites) and
 * one flag of an instance (a diagnostic for the tests); the layout of both changes from one
 * CPython version to the next. Each pyNNN.h gives the same small set of inline functions,
 * written from that version's headers, and nothing else of _accel.c is version-specific:
 *
 *   rd_frame                          the interpreter's frame (_PyInterpreterFrame)
 *   rd_current_frame(tstate)          the newest frame of the thread, complete or not
 *   rd_frame_incomplete(f)            a frame sys._getframe() does not show (being set up,
 *                                     or the C stack's entry frame): skip it
 *   rd_frame_previous(f)              the frame that called f
 *   rd_frame_code(f)                  f's code object, borrowed (complete frames only)
 *   rd_frame_lasti(f)                 f's instruction offset in code units (complete only)
 *   rd_frame_local0(f)                f's first local (fast locals slot 0), borrowed, or NULL
 *   rd_dict_materialized(obj)         1 if obj (a type with a managed dict) has a real dict
 *   rd_long_sign(v)                   -1, 0 or 1: the sign of an exact int
 *   RD_FRAMES_VERSION                 "3.11", ...: which header was chosen
 *
 * hatch_build.py compiles this only on the versions listed there; any other version stops
 * here with #error, and the build falls back to pure Python. Free-threaded builds as well:
 * the probes' C state assumes the GIL.
 */
#ifndef RD_ACCEL_FRAMES_H
#define RD_ACCEL_FRAMES_H

#ifdef Py_GIL_DISABLED
#error "dashboard._accel does not support free-threaded CPython builds"
#elif PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#include "py311.h"
#elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000
#include "py312.h"
#elif PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000
#include "py313.h"
#elif PY_VERSION_HEX >= 0x030E0000 && PY_VERSION_HEX < 0x030F0000
#include "py314.h"
#else
#error "dashboard._accel: no frame access written for this CPython version"
#endif

#endif /* RD_ACCEL_FRAMES_H */
