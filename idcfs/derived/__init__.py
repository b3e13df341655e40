"""Files made from a series: a volume (NIfTI) of an image series, a label map of a SEG.

Built once per (series, converter and version, options), in a child process with a deadline,
from the series' objects read through the block cache; kept in the disk cache as one block of
its own (counted in the cap, evicted least recently used, rebuilt on the next use: a build is
deterministic, so a rebuild gives the same bytes). :mod:`idcfs.vfs` shows them as a folder
``<series folder>.nifti/`` beside the series.
"""
