#!/usr/bin/env python3
"""Checks that Debian packages unpacked into a private root carry every shared library they need.

  deb_closure.py ROOT [ELF...]

Follows the NEEDED entries (readelf -d) of each ELF file given, or by default of the files the
GPU machine runs from ROOT (libmpi, orterun, orted, the Open MPI and PMIx components a one-node
run loads, libhdf5_serial, Boost.Program_options), through every library found under ROOT, and
prints each library name that is neither under ROOT nor in the base set that any machine with a
compiler has (glibc, libstdc++, libgcc, libgomp) or that the build brings itself (CUDA, and the
compute layers' packages: fmt, OpenBLAS). Exit 1 when something is missing.

scripts/gpu-check.sh --fetch runs it on the pipeline's packages (PIPELINE_DEBS) after the download.
"""

import os
import subprocess
import sys

BASE = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2",
    "libutil.so.1", "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1",
}
ELSEWHERE = ("libcuda", "libcudart", "libcublas", "libnccl", "libfmt", "libopenblas", "libgfortran",
             "libquadmath")

# What a one-node run of mixsim loads: mpirun (orterun), the daemon, libmpi and the components of
# the pml/btl/plm/... choices gpu-check.sh makes, PMIx's components, HDF5 and Boost.
DEFAULT_FILES = [
    "usr/bin/orterun", "usr/bin/orted",
    "usr/lib/x86_64-linux-gnu/libmpi.so.40",
    "usr/lib/x86_64-linux-gnu/libhdf5_serial.so.103",
    "usr/lib/x86_64-linux-gnu/libboost_program_options.so.1.74.0",
] + [f"usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_{c}.so" for c in (
    "pml_ob1", "btl_self", "btl_vader", "plm_isolated", "ess_hnp", "ess_pmi", "ess_singleton",
    "pmix_ext3x", "odls_default", "osc_sm", "osc_pt2pt", "coll_tuned", "coll_basic", "coll_libnbc",
    "shmem_mmap", "shmem_posix", "oob_tcp", "state_hnp", "rmaps_round_robin", "schizo_ompi")]


def needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"deb_closure: readelf cannot read {path}: {out.stderr.strip()}")
    return [line.split("[", 1)[1].split("]", 1)[0]
            for line in out.stdout.splitlines() if "(NEEDED)" in line]


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    root = argv[1]
    files = argv[2:] or [os.path.join(root, f) for f in DEFAULT_FILES]
    pmix = os.path.join(root, "usr/lib/x86_64-linux-gnu/pmix2/lib/pmix")
    if not argv[2:] and os.path.isdir(pmix):
        files += [os.path.join(pmix, f) for f in sorted(os.listdir(pmix)) if f.endswith(".so")]
    present = {}
    for d, _, names in os.walk(root):
        for name in names:
            if ".so" in name:
                present.setdefault(name, os.path.join(d, name))
    for f in files:
        if not os.path.exists(f):
            print(f"deb_closure: {f} is not there: the packages changed, or the list here is stale",
                  file=sys.stderr)
            return 1
    seen, todo, missing = set(), list(files), {}
    while todo:
        path = os.path.realpath(todo.pop())
        if path in seen:
            continue
        seen.add(path)
        for lib in needed(path):
            if lib in BASE or lib.startswith(ELSEWHERE):
                continue
            if lib in present:
                todo.append(present[lib])
            else:
                missing.setdefault(lib, set()).add(os.path.basename(path))
    for lib, users in sorted(missing.items()):
        print(f"deb_closure: missing {lib}, needed by {', '.join(sorted(users)[:4])}",
              file=sys.stderr)
    print(f"deb_closure: {len(seen)} files checked, {len(missing)} libraries missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
