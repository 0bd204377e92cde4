"""Preprocessed on-disk datasets: sharded HDF5 files plus a JSON manifest.

``mlip preprocess CONFIG.yaml`` reads the config's train/valid/test files one structure at a
time (``ase.io.iread``; never a whole file in memory), validates each structure exactly like
:func:`mlip.data.reading.read_labelled`, builds its neighbour graph once
(:func:`mlip.data.graph.atoms_to_graph`), and appends it to a shard buffer that is written out
when it reaches ``shard_structures`` structures or ``shard_megabytes`` MB. Training then reads
structures from the shards on demand (:class:`StoreDataset`), so memory stays bounded whatever
the dataset size.

Why HDF5 (through h5py):

* random access: one structure is a handful of slice reads of contiguous arrays, with no need to
  decode neighbouring structures (unlike a compressed tar/pickle stream or one ``.pt`` per shard);
* well kept: HDF5 is a decades-old, documented, portable format with readers in every language,
  and h5py is a mature, widely packaged binding; a store written here can be inspected with
  ``h5ls``/``h5dump`` or read without mlip;
* one file per shard: shards are written independently (each to a temporary name, then
  ``os.replace``'d), can be copied/checksummed/verified individually, and many DataLoader workers
  or ranks can open them read-only concurrently without locking;
* compression optional: ``--compression gzip|lzf`` stores chunked, compressed arrays (smaller,
  slower random access); the default stores contiguous uncompressed arrays (fastest reads).

Layout of a store folder::

    manifest.json                   written last, atomically; lists everything below
    train-<run>-00000.h5, ...       shards of the training file (all non-isolated structures)
    valid-<run>-00000.h5, ...       shards of data.valid_file (if given)
    test-<run>-00000.h5, ...        shards of data.test_file (if given)

One shard (``n`` structures, ``A`` atoms, ``E`` edges in total) holds concatenated arrays:

=====================  =================  ==================================================
dataset                shape, dtype       meaning
=====================  =================  ==================================================
``offsets``            ``[n+1, 2]`` i8    (first atom, first edge) of each structure; the
                                          last row is ``(A, E)``
``positions``          ``[A, 3]`` f8      Å
``numbers``            ``[A]`` u1         atomic numbers
``cell``               ``[n, 3, 3]`` f8   graph cell (zeros for non-periodic structures)
``pbc``                ``[n, 3]`` bool    periodic flags
``edge_index``         ``[E, 2]`` i4      (receiver i, sender j), indices local to the structure
``unit_shifts``        ``[E, 3]`` i4      integer lattice shifts
``source_index``       ``[n]`` i8         index of the structure in its source file
``labels/<target>``    ``[n, ...]`` or    labels in model units, float64 (bit-exact copies of
                       ``[A, ...]`` f8    what :func:`~mlip.data.reading.read_labelled` gives)
=====================  =================  ==================================================

so that structure ``k`` is ``positions[offsets[k,0]:offsets[k+1,0]]`` etc.

The manifest records the preprocessing settings (cutoff, targets, E0 setting, split), the shards
with their sizes and SHA-256 checksums, and the training-set statistics the model needs (E0s,
scale/shift, average neighbour count, tensor scales/shifts). The statistics are computed in a
streaming pass over the written shards (reading only the arrays they need, one shard at a time):
the E0 least-squares fit accumulates its normal equations ``CᵀC`` and ``CᵀE`` (``C`` = element
counts), the per-atom energy shift/spread and the tensor λ=0 shifts use a mergeable (Chan et al.)
mean/variance, and the force RMS and neighbour counts are plain sums — the same quantities as
:func:`mlip.data.dataset.compute_statistics` on the same structures, to rounding.

A store is only usable once its manifest exists and says ``complete``; re-running ``mlip
preprocess`` writes shards under a new run id, replaces the manifest atomically, and only then
deletes the old shards, so an interrupted re-run leaves the previous store intact.

The package: :mod:`~mlip.data.store.layout` (format constants, checksums),
:mod:`~mlip.data.store.writer` (shards), :mod:`~mlip.data.store.stats` (streamed statistics),
:mod:`~mlip.data.store.build` (``preprocess``), :mod:`~mlip.data.store.reader` (verification and
the dataset). Structures are read and validated by :func:`mlip.data.reading.iter_labelled`, the
same reader as in-memory training.
"""

from __future__ import annotations

from mlip.data.dataset import split_indices
from mlip.data.store.build import preprocess
from mlip.data.store.layout import (
    DEFAULT_SHARD_MEGABYTES,
    DEFAULT_SHARD_STRUCTURES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PARTS,
    SHARD_FORMAT,
    file_sha256,
)
from mlip.data.store.reader import PreprocessedStore, StoreDataset
from mlip.data.store.stats import compute_store_statistics, statistics_from_json, statistics_to_json
from mlip.data.store.writer import ShardWriter

__all__ = [
    "DEFAULT_SHARD_MEGABYTES",
    "DEFAULT_SHARD_STRUCTURES",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PARTS",
    "SHARD_FORMAT",
    "PreprocessedStore",
    "ShardWriter",
    "StoreDataset",
    "compute_store_statistics",
    "file_sha256",
    "preprocess",
    "split_indices",
    "statistics_from_json",
    "statistics_to_json",
]
