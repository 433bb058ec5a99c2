"""The generate image's HEALTHCHECK: exit 0 when `charlstm serve` answers /healthz on $CHARLSTM_PORT."""

import os
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get('CHARLSTM_PORT', '8000')}/healthz", timeout=3):
        pass
except OSError as e:
    sys.exit(f"unhealthy: {e}")
