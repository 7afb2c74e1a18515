#!/bin/sh
# Start tritonserver with the image's Python packages visible to python-backend models.
set -e
PYTHONPATH=$(python3 -c 'import site; print(":".join(site.getsitepackages()))')
export PYTHONPATH
if [ -f /opt/tritonserver/ld_library_path ]; then  # the wheel's server: its bundled libraries
  LD_LIBRARY_PATH="$(cat /opt/tritonserver/ld_library_path):${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
fi
exec /opt/tritonserver/bin/tritonserver "$@"
