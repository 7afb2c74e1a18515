#!/bin/sh
# Start tritonserver with the image's Python packages visible to python-backend models.
set -e
PYTHONPATH=$(python3 -c 'import site; print(":".join(site.getsitepackages()))')
export PYTHONPATH
if [ -f /opt/tritonserver/ld_library_path ]; then  # the wheel's server: its bundled libraries
  LD_LIBRARY_PATH="$(cat /opt/tritonserver/ld_library_path):${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
fi
# Bounded memory under long load (scripts/local_triton.py, MALLOC_ENVIRONMENT, says why); a value
# given to the container wins.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}" MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1048576}"
exec /opt/tritonserver/bin/tritonserver "$@"
