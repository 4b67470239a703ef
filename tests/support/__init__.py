"""What the tests share: real node processes, network namespaces, harnesses, bounded waits.

Importable as ``support.*`` because setup.cfg's pytest section puts tests/ on
``sys.path`` (``pythonpath = tests``); nothing here is part of the package.
"""
