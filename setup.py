"""Build the Cython fast path (sfu/_fast)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "sfu._fast.packet",
        ["sfu/_fast/packet.pyx"],
        extra_compile_args=["-O3"],
    ),
    # recvmmsg/sendmmsg -> demux -> libsrtp (called through pylibsrtp's cffi pointers) -> sendmmsg
    Extension(
        "sfu._fast.datapath",
        ["sfu/_fast/datapath.pyx"],
        extra_compile_args=["-O3"],
        define_macros=[("_GNU_SOURCE", None)],
    ),
    # the benchmark's floor: only libsrtp protect + sendmmsg of the same packets (bench/README.md)
    Extension(
        "bench.floor",
        ["bench/floor.pyx"],
        extra_compile_args=["-O3"],
        define_macros=[("_GNU_SOURCE", None)],
    ),
    # the load generator's receiver: many viewer sockets read by one native thread
    Extension(
        "bench.sink",
        ["bench/sink.pyx"],
        extra_compile_args=["-O3"],
        define_macros=[("_GNU_SOURCE", None)],
    ),
    # the load generator's sender: many publishers paced, protected and sent by one native thread
    Extension(
        "bench.publisher",
        ["bench/publisher.pyx"],
        extra_compile_args=["-O3"],
        define_macros=[("_GNU_SOURCE", None)],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
