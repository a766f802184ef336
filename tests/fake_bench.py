"""A stand-in for benchmarks/bench_models.py in tests/test_bench_contention.py.

`fake_bench.py NAME` prints `{"name": NAME, "per_sec": 40 if a partner runs else 100}`;
`fake_bench.py --forever NAME` is the partner: it marks itself running (the file named
by $FAKE_BENCH_MARK) and prints a second per call every 0.05 s until terminated, 0.02 s
a call with another partner's mark absent. The mark goes when it is terminated."""

import json
import os
import signal
import sys
import time

mark = os.environ["FAKE_BENCH_MARK"]
if sys.argv[1] == "--forever":
    open(mark, "w").close()
    signal.signal(signal.SIGTERM, lambda *_: (os.remove(mark), sys.exit(0)))
    while True:
        print(json.dumps({"sec_per_call": 0.02}), flush=True)
        time.sleep(0.05)
else:
    print("warming up")
    print(json.dumps({"name": sys.argv[1], "per_sec": 40.0 if os.path.exists(mark) else 100.0}))
