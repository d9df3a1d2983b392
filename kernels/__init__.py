"""Fast kernels for the engine, each checked against the engine's plain torch reference.

With TRITON_INTERPRET=1 (CI, no GPU) Triton runs the kernels in numpy. Its interpreter turns a
scalar tensor into an int with `int(array)`, which NumPy 2 refuses for the 1-element arrays it
holds scalars in (`range(0, n)` over a kernel argument fails); the shim below reads the one
element instead. Compiled kernels are untouched.
"""

import os


def _interpreter_numpy2_shim() -> None:
    from triton.runtime import interpreter

    original = interpreter._LangPatchScope.set_attr

    def set_attr(self, obj, name, value):
        if name == "__index__":
            value = lambda tensor: int(tensor.handle.data.reshape(-1)[0])  # noqa: E731
        original(self, obj, name, value)

    interpreter._LangPatchScope.set_attr = set_attr


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_numpy2_shim()
