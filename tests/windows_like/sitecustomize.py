"""Python as on Windows, as far as idcfs can tell: the POSIX-only calls taken away.

On ``PYTHONPATH`` (``PYTHON_AS_ON_WINDOWS=1`` turns it on), this runs at every interpreter's
start. The standard library's own POSIX branches (and platformdirs', chosen the same way) are
loaded first (``subprocess`` reads ``os.waitstatus_to_exitcode`` at import, ``shutil`` and
``tempfile`` pick their paths then): taking the calls away before that breaks the standard
library, not idcfs; and what is loaded by then keeps the whole modules at run time (subprocess
waits with ``os.WNOHANG`` there). Then what Windows' ``os``, ``mmap`` and ``signal`` lack is
deleted and the POSIX-only modules made unimportable, so code of idcfs that reaches for one
fails here as it would there. What this cannot show: Windows' own behaviour (files open
elsewhere cannot be replaced or removed, ``\\`` in paths, text mode): the code says what it does
there, and mypy's ``--platform win32`` checks the calls that exist.
"""

import os

if os.environ.get("PYTHON_AS_ON_WINDOWS") == "1":
    import sys

    for _name in (
        "asyncio",
        "concurrent.futures",
        "email.utils",
        "http.client",
        "logging.handlers",
        "multiprocessing",
        "selectors",
        "shutil",
        "socket",
        "socketserver",
        "sqlite3",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "uuid",
        "getpass",
        "pathlib",
        "platform",
        "mmap",
        "signal",
    ):
        __import__(_name)
    # Libraries that pick their POSIX branch at import, as the standard library does.
    for _name in ("platformdirs",):
        try:  # noqa: SIM105 - contextlib is one more import for every interpreter
            __import__(_name)
        except ImportError:
            pass

    import mmap
    import signal
    import types

    # What is loaded so far (the standard library's POSIX implementation: subprocess waits with
    # os.WNOHANG and kills with signal.SIGKILL, shutil.disk_usage calls os.statvfs) keeps the
    # whole modules; only what is imported from now on, idcfs among it, sees them cut down.
    _whole = {}
    for _module in (os, mmap, signal):
        _copy = types.ModuleType(_module.__name__)
        _copy.__dict__.update(_module.__dict__)
        _whole[id(_module)] = _copy
    for _loaded in list(sys.modules.values()):
        _namespace = getattr(_loaded, "__dict__", None)
        if _namespace is None or _loaded in (os, mmap, signal) or _namespace is globals():
            continue
        for _key, _value in list(_namespace.items()):
            if id(_value) in _whole and _value in (os, mmap, signal):
                _namespace[_key] = _whole[id(_value)]

    #: What Windows' os module lacks, of what a POSIX program reaches for.
    _OS = (
        "fork", "forkpty", "register_at_fork", "wait", "wait3", "wait4", "waitpid", "WNOHANG",
        "pread", "preadv", "pwrite", "pwritev", "posix_fadvise", "posix_fallocate",
        "sysconf", "sysconf_names", "confstr", "pathconf", "fpathconf", "statvfs", "fstatvfs",
        "getuid", "geteuid", "getgid", "getegid", "getgroups", "setuid", "setgid", "setsid",
        "getpgid", "killpg", "getsid", "nice", "getpriority", "setpriority", "sched_getaffinity",
        "getxattr", "setxattr", "listxattr", "removexattr",
        "O_CLOEXEC", "O_DIRECT", "O_NOFOLLOW", "O_NONBLOCK", "O_SYNC", "O_DSYNC", "O_NOATIME",
        "mkfifo", "mknod", "chown", "lchown", "fchown", "fchmod", "sync", "fsync_range",
    )  # fmt: skip
    for _name in _OS:
        if hasattr(os, _name):
            delattr(os, _name)
    for _name in ("MAP_PRIVATE", "MAP_SHARED", "MAP_ANONYMOUS", "MAP_ANON", "PROT_READ", "PROT_WRITE", "MADV_DONTNEED"):
        if hasattr(mmap, _name):
            delattr(mmap, _name)
    for _name in (
        "SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE", "SIGQUIT",
        "pthread_sigmask", "sigwait", "SIG_BLOCK", "setitimer", "alarm", "pause", "siginterrupt",
    ):  # fmt: skip
        if hasattr(signal, _name):
            delattr(signal, _name)
    for _name in ("fcntl", "resource", "pwd", "grp", "termios", "tty", "pty"):
        sys.modules[_name] = None  # type: ignore[assignment]
