"""rockstar-mp with a plain os.fork() parent (no gunicorn): ``python -m examples.prefork``.

The parent starts the monitoring, forks 3 workers that each count 1,000 jobs and exit, then reads the
merged total from the aggregator's HTTP endpoint: 3,000, although every worker is gone.
"""
import json
import os
import sys
import time
import urllib.request

from rockstar_mp import Counter, MonitoringConfig, MonitoringManager, attach_worker

JOBS = Counter("jobs.done", "Jobs done by the workers")


def worker() -> None:
    attach_worker()  # finds the segment in $ROCKSTAR_SEGMENT and claims a free slab
    for _ in range(1000):
        JOBS.inc()


def main(port: int = 9090) -> int:
    manager = MonitoringManager(MonitoringConfig(metrics_port=port)).start()
    try:
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    worker()
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        url = f"http://127.0.0.1:{manager.config.metrics_port}/metrics"
        deadline = time.monotonic() + 15
        while True:  # wait until the aggregator is up and has folded the three exited workers
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    data = json.load(response)
                if data["system"]["workers_folded"] == 3 or time.monotonic() > deadline:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        print(f"jobs.done = {data['counters'].get('jobs.done')} from {data['system']['workers_folded']} "
              "workers that have all exited")
        return 0
    finally:
        manager.stop()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9090))
