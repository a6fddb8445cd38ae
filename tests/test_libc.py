"""dsvc.libc: C functions resolved once, None where the C library lacks them."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from dsvc import libc


def test_a_function_of_the_c_library_is_called_with_its_argument_types() -> None:
    getppid = libc.function("getppid")
    assert getppid is not None
    assert getppid() == os.getppid()
    labs = libc.function("labs", "c_long")
    assert labs is not None and labs(-7) == 7


def test_a_lookup_is_cached() -> None:
    assert libc.function("getpid") is libc.function("getpid")


def test_a_function_the_c_library_lacks_is_none() -> None:
    assert libc.function("dsvc_no_such_function_in_libc") is None
    assert libc.function("dsvc_no_such_function_in_libc") is None


def test_an_unknown_argument_type_is_none_not_an_error() -> None:
    assert libc.function("abs", "c_no_such_type") is None
    abs_ = libc.function("abs", "c_int")
    assert abs_ is not None and abs_(-3) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="errno of a Linux call")
def test_a_failed_call_leaves_its_errno() -> None:
    fallocate = libc.function("fallocate", "c_int", "c_int", "c_longlong", "c_longlong")
    assert fallocate is not None
    assert fallocate(-1, 0, 0, 4096) == -1
    assert ctypes.get_errno() == 9  # EBADF
