"""The aggregator process: merges every worker and serves HTTP (run as ``python -m rockstar_mp.aggregator``).

Nothing in a worker imports this package.
"""
