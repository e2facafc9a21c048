"""Only the C part lives here; everything else about the package is in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The lock-step hot path of downloads (netsvc/tftp/lockstep.py). Optional: without a
        # C compiler the package installs and downloads run the same engine in Python.
        Extension(
            "netsvc.tftp._lockstep",
            ["netsvc/tftp/_lockstep.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
