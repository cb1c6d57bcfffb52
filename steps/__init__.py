"""The streaming shard step: everything that runs inside a pod or a local worker.

Nothing here knows about Argo, Hera or process pools; `shardflow.workflows` drives these
functions, and the same code runs on a laptop and on a cluster.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shardflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
