"""Container health check of a web process: healthy when it answers GET /api/v1/health at all.

200 ("ok") and 503 ("degraded"/"down": no card can sign) both mean the process works; a card
that is away is the dashboard's business, not a reason to restart the web process. Standard
library only, so it runs in the image without curl:

    python deploy/healthcheck.py [URL]      (default http://127.0.0.1:8000/api/v1/health)
"""

import sys
import urllib.error
import urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/api/v1/health"
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        status = response.status
except urllib.error.HTTPError as exc:
    status = exc.code
except OSError as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
print(f"HTTP {status}")
sys.exit(0 if status in (200, 503) else 1)
