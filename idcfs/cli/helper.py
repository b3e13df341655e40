"""fstab and ``mount -t``: the calling conventions of mount(8) and mount.fuse3, as ``idcfs mount``.

mount(8) runs ``/sbin/mount.idcfs DEVICE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`` for type ``idcfs``;
for type ``fuse.idcfs`` (or ``idcfs#DEVICE`` with type ``fuse``) mount.fuse3 runs
``idcfs DEVICE DIR -o OPTIONS``. Both become ``idcfs mount DIR -o OPTIONS``: the options are the
same keys as the config file and the flags, and the daemon starts detached as usual, so the
mount command returns once the mount answers. DEVICE may name the cloud (``aws`` or ``gcs``);
``none`` or ``idcfs`` leave it to the options.
"""

from __future__ import annotations

import argparse

from idcfs.config.sources import ConfigError

#: What the device field of an fstab line may say, and the ``source`` it stands for.
DEVICES = {"aws": "aws", "gcs": "gcs", "none": None, "idcfs": None, "": None}


def is_helper_call(argv: list[str], commands: set[str]) -> bool:
    """``idcfs DEVICE DIR -o ...`` (mount.fuse3's call) rather than ``idcfs COMMAND ...``.

    Only a device idcfs knows (``aws``, ``gcs``, ``none``, ``idcfs#...``) or mount(8)'s own shape
    (a device, a directory, ``-o``) is a helper call: ``idcfs stat MNT`` is a misspelt command.
    """
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        return False
    device = argv[0].strip().lower()
    return device in DEVICES or "#" in device or (len(argv) >= 3 and "-o" in argv[2:])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mount.idcfs",
        description="Mount IDC as mount(8) does it, from an fstab line: "
        "mount.idcfs DEVICE DIR [-o key=value,...]. DEVICE is aws, gcs or none.",
    )
    parser.add_argument("device")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options (warn)")
    parser.add_argument("-f", dest="fake", action="store_true", help="check everything, mount nothing")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="(ignored: there is no mtab to write)")
    parser.add_argument("-v", dest="verbose", action="store_true", help="(ignored)")
    parser.add_argument("-t", dest="type", default=None, help="(ignored: always idcfs)")
    parser.add_argument("-N", dest="namespace", default=None, help="(not supported)")
    return parser


def helper_argv(argv: list[str]) -> list[str]:
    """The ``idcfs`` arguments that do what this mount(8)-style call asks."""
    args = _parser().parse_args(argv)
    if args.namespace is not None:
        raise ConfigError("mount.idcfs: -N (mount namespaces) is not supported")
    device = args.device.strip().lower().rsplit("#", 1)[-1]  # "idcfs#none": the legacy fuse form
    if device not in DEVICES:
        raise ConfigError(f"mount.idcfs: device {args.device!r} should be aws, gcs or none")
    command = ["mount", args.mountpoint]
    if DEVICES[device]:
        # Lowest precedence of the command line: a source= in -o still wins.
        command += ["-o", f"source={DEVICES[device]}"]
    for text in args.options:
        command += ["-o", text]
    if args.sloppy:
        command.append("--sloppy")
    if args.fake:
        command.append("--dry-run")
    return command
