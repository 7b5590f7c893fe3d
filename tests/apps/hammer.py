"""A test app: ``/?n=N`` increments one counter N times, with a thread switch forced every microsecond."""
import sys
from urllib.parse import parse_qs

from rockstar_mp import Counter

sys.setswitchinterval(1e-6)
HAMMER = Counter("test.hammer", "Increments made by the hammer app")


def app(environ, start_response):
    n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["1"])[0])
    for _ in range(n):
        HAMMER.inc()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
