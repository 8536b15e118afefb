"""A check shared by the writers that go through fusedrnn.io's atomic writer (the ONNX export,
the Keras weights file): a failed write names the user's path, leaves no temporary behind and
does not touch a user's file named like a temporary."""
import os

import pytest


def check_failed_writes_leave_nothing(save, tmp_path, name):
    """save(path) onto a directory and into a missing folder: OSError naming the path; the
    folder then holds only the directory and a user's ``name.tmp``, unchanged."""
    target = tmp_path / name
    target.mkdir()
    (tmp_path / (name + ".tmp")).write_text("precious")
    with pytest.raises(OSError, match=f"cannot write .*{name.replace('.', '[.]')}: it is a "
                                      f"directory"):
        save(target)
    with pytest.raises(OSError, match=f"cannot write .*missing.x[.]{name.split('.', 1)[1]}"):
        save(tmp_path / "missing" / ("x." + name.split(".", 1)[1]))
    assert sorted(os.listdir(tmp_path)) == [name, name + ".tmp"]
    assert (tmp_path / (name + ".tmp")).read_text() == "precious"
