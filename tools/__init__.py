"""tools/ — what a reader of the method can skip: the plumbing the programs share (`cli.py`), the reproduction
driver (`reproduce.py`), the benchmarks (`bench.py`), the synthetic-7B timing (`synthetic.py`), a checkpoint's
load timing (`load.py`), the GPU check (`gpu_check.py`) and a refactor's proof (`same_bytes.py`).

Imports flow one way: `cli.py` imports only `data` at import time (the programs' main() functions use it); the
drivers import the five top-level files; nothing at the top level imports a driver.
"""
